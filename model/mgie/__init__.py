"""MGIE (Fu et al., ICLR 2024, "Guiding Instruction-based Image Editing via Multimodal Large Language Models").

The second model of this project, trained on the same shards with the same conventions as SmartEdit, and sharing
its LLaVA wrapper (model/llava.py), UNet and VAE code (model/unet.py). One concept per file:

- ``config.py``       MGIEConfig (+ EditHeadConfig), presets ``tiny`` and ``7b``
- ``edit_head.py``    EditMapper: [IMG] hidden states + token embeddings → 77 × 768 UNet context
- ``positions.py``    which hidden states feed the edit head (the official demo's rule)
- ``processor.py``    the MGIE conversation: "what will this image be like if '<instr>'" → "<summary> [IMG0] … [IMG7]"
- ``model.py``        MGIEModel (CE + 0.5 · diffusion MSE, learned null condition) and ``build_mgie``
- ``pipeline.py``     MGIEPipeline (greedy generation → edit head → three-way CFG InstructPix2Pix sampling)
- ``train_config.py`` / ``train.py``  the training recipe and its presets (``mgie-7b``, ``tiny``)
- ``expressive.py``   the expressive-instruction data step (LLaVA description → ≤ 32-word summary)
- ``comparison.py``   one Reason-Edit report comparing SmartEdit and MGIE beside the papers' numbers

The released ``mgie_7b`` weights import with ``smartedit import-checkpoint mgie-official``
(model/importers/mgie_official.py).
"""
