"""LiteMedSAM: a TinyViT image encoder with SAM's prompt encoder and mask decoder, at 256x256.

Conventions of the reference (bowang-lab/MedSAM, LiteMedSAM branch): the input is a slice resized so
its longest side is 256, min-max normalised to [0, 1] (no mean/std), padded bottom/right to
256x256; prompts are in that 256x256 pixel space; the decoder returns 256x256 logits.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from medsam2.models.mask_decoder import MaskDecoder
from medsam2.models.onednn_fusion import fused_module
from medsam2.models.prompt_encoder import PromptEncoder
from medsam2.models.tiny_vit import TinyViT, fold_batch_norms
from medsam2.models.transformer import TwoWayTransformer
from medsam2.models.weights import bundled_lite_medsam_checkpoint, check_state_fits, load_state_strictly, read_state_dict

IMAGE_SIZE = 256
EMBED_DIM = 256
EMBEDDING_SIZE = IMAGE_SIZE // 4
# How far the fused parts may stray from their unfused run on the example inputs, (embedding,
# logits) per dtype: float32 differs by rounding alone (about 1e-5); bfloat16 keeps 8 bits of
# mantissa, so a logit of 20 moves by up to 0.125 from rounding alone, and fusion changes where
# intermediate results are rounded.
FUSION_TOLERANCES = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (0.1, 1.0)}


class LiteMedSAM(nn.Module):
    """The network, with parameter names of the published `lite_medsam.pth`."""

    image_size = IMAGE_SIZE

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = TinyViT(
            embed_dims=(64, 128, 160, 320),
            depths=(2, 2, 6, 2),
            num_heads=(2, 4, 5, 10),
            window_sizes=(7, 7, 14, 7),
            merge_strides=(2, 2, 1),  # 256 -> 128 -> 64 -> 64
            out_chans=EMBED_DIM,
        )
        self.prompt_encoder = PromptEncoder(
            embed_dim=EMBED_DIM,
            image_embedding_size=(EMBEDDING_SIZE, EMBEDDING_SIZE),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
            mask_in_chans=16,
        )
        self.mask_decoder = MaskDecoder(
            transformer_dim=EMBED_DIM,
            transformer=TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, num_heads=8, mlp_dim=2048),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        )

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256) float in [0, 1] -> image embeddings (B, 256, 64, 64)."""
        return self.image_encoder(images)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits for prompts in 256x256 pixel space.

        image_embeddings (B, 256, 64, 64), or (1, ...) shared by B prompts; boxes (B, 4) as
        x_min, y_min, x_max, y_max; points (B, N, 2) as x, y with point_labels (B, N): 1 foreground,
        0 background, -1 padding; mask_logits (B, 1, 256, 256), e.g. a previous output.
        Returns low-res logits (B, K, 256, 256) and predicted IoUs (B, K); K is 3 with
        `multimask_output`, else 1.
        """
        prompts = (p for p in (boxes, points, mask_logits) if p is not None)
        batch_size = next(prompts, image_embeddings).shape[0]
        sparse, dense = self.prompt_encoder(batch_size, points, point_labels, boxes, mask_logits)
        return self.mask_decoder(
            image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output
        )

    def optimize_for_inference(self) -> LiteMedSAM:
        """Eval mode, the encoder's BatchNorms folded into its convs and its conv weights in
        channels-last layout (oneDNN's fast path on CPU; activations follow). Logits move by at most
        about 1e-4, the float32 rounding noise of this network. The result no longer matches the
        checkpoint's parameter names: do not train or save it."""
        fold_batch_norms(self.image_encoder)
        self.image_encoder.to(memory_format=torch.channels_last)
        return self.eval()


class BoxDecoder(nn.Module):
    """The decoder for one box on one image embedding, single-mask output: the call propagation
    makes on every slice, as a module of its own so that it can be fused.

    With `dtype` bfloat16 the mask decoder is a bfloat16 copy (the prompt encoder stays float32:
    box coordinates need its precision); inputs and outputs are float32 either way."""

    def __init__(self, model: LiteMedSAM, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.dtype = dtype
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder if dtype == torch.float32 else copy.deepcopy(model.mask_decoder).to(dtype)

    def forward(self, image_embeddings: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, 256, 64, 64), (1, 4) -> logits (1, 1, 256, 256), predicted IoU (1, 1): `LiteMedSAM.decode`
        of the box."""
        sparse, dense = self.prompt_encoder(1, boxes=boxes)
        low_res, iou = self.mask_decoder(
            image_embeddings.to(self.dtype),
            self.prompt_encoder.get_dense_pe().to(self.dtype),
            sparse.to(self.dtype),
            dense.to(self.dtype),
            False,
        )
        return low_res.float(), iou.float()


def fused_parts(model: LiteMedSAM, dtype: torch.dtype = torch.float32) -> tuple[Callable, Callable]:
    """`model`'s image encoder and `BoxDecoder` fused by oneDNN Graph for the CPU
    (`medsam2.models.onednn_fusion`), in float32 or, for CPUs with native bfloat16, bfloat16.

    The encoder takes one channels-last image (1, 3, 256, 256) of `dtype` and returns its embedding
    in `dtype`; the decoder takes and returns float32. `model` in eval mode. Both are snapshots of the
    weights: make them again after changing them. float32 reproduces torch within 1e-4; bfloat16 is
    not bit-exact (embeddings move by about 0.06, large logits by a few tenths)."""
    image, embedding, box = example_inputs()
    image = image.to(dtype=dtype, memory_format=torch.channels_last)
    encoder = model.image_encoder
    if dtype != torch.float32:
        encoder = copy.deepcopy(encoder).to(dtype=dtype, memory_format=torch.channels_last)
    embedding_tolerance, logit_tolerance = FUSION_TOLERANCES[dtype]
    return (
        fused_module(encoder, (image,), embedding_tolerance),
        fused_module(BoxDecoder(model, dtype).eval(), (embedding, box), logit_tolerance),
    )


def example_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An image (1, 3, 256, 256), an embedding (1, 256, 64, 64) and a box (1, 4): fixed random
    inputs on which a compiled part of the network is checked against torch."""
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    embedding = torch.randn(1, EMBED_DIM, EMBEDDING_SIZE, EMBEDDING_SIZE, generator=generator)
    return image, embedding, torch.tensor([[64.0, 80.0, 150.0, 170.0]])


def load_lite_medsam(
    path: Path | str | None = None, device: str | torch.device = "cpu", optimize: bool = True
) -> LiteMedSAM:
    """LiteMedSAM in eval mode with the bundled weights, or a fine-tuned checkpoint at `path`
    (a state dict or {"model": state_dict}); `optimize=False` keeps it trainable."""
    checkpoint = bundled_lite_medsam_checkpoint() if path is None else Path(path)
    return lite_medsam_from_state(read_state_dict(checkpoint), checkpoint, device, optimize)


def check_lite_medsam_state(state: dict[str, torch.Tensor], path: Path) -> None:
    """A one-line error unless `state` loads into LiteMedSAM (checked on the meta device: no weights built)."""
    with torch.device("meta"):
        check_state_fits(LiteMedSAM(), state, path, "LiteMedSAM")


def lite_medsam_from_state(
    state: dict[str, torch.Tensor], path: Path, device: str | torch.device = "cpu", optimize: bool = True
) -> LiteMedSAM:
    """`load_lite_medsam` for a state dict already read from `path` (named in errors)."""
    model = LiteMedSAM()
    load_state_strictly(model, state, path, "LiteMedSAM")
    model.eval()
    if optimize:
        model.optimize_for_inference()
    return model.to(device)
