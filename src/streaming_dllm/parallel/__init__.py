"""Scale-out inside one model: tensor parallel (``tensor``) and the serving lockstep (``lockstep``)."""
