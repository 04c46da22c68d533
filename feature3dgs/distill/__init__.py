"""Feature distillation: 2D teachers (SAM, dense CLIP, LSeg), the on-disk teacher-feature cache,
and the distillation loss on the trainer."""
