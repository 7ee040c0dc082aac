"""The frozen diffusion model and what is read from it: backbones (hub id, local folder, or the
in-process ``tiny``/``sd-v1-random``), the CLIP tokenizer, class prompts, attention capture (a
diffusers processor), extraction (prepare, encode, noise / inversion, one UNet step →
``AttentionBundle``) and candidate-class filters."""
