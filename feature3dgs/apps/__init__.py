"""What a trained feature scene is for: SAM prompts and click selection on novel views
(:mod:`.segment`), text queries (:mod:`.query`), 3D edits (:mod:`.edit`), multi-view object masks
(:mod:`.mask_fusion`) and closed-set semantics (:mod:`.semantic`)."""
