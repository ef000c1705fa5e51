"""Scale-out inside one model: tensor parallel (``tensor``), the serving lockstep (``lockstep``) and
joining torchrun's process group (``group``)."""
