"""Text-to-image and image-to-image with the Stable Diffusion XL family.

SDXL-Turbo is the reference model: one to four Euler-ancestral steps at 512×512
without classifier-free guidance. Two presets:

* ``tiny-sdxl``: the real SDXL architecture (UNet2DConditionModel with the
  ``text_time`` addition embedding, AutoencoderKL with the ×8 downsampling,
  CLIPTextModel + CLIPTextModelWithProjection) at toy widths with random
  weights from a fixed seed. Builds in well under a second on a CPU; outputs
  are noise-like but exercise every code path a real model does.
* ``sdxl-turbo``: ``stabilityai/sdxl-turbo`` in diffusers layout under
  ``<weights_dir>/sdxl-turbo``, loaded with ``local_files_only=True``.

Both pipelines share one set of modules, so serving image-to-image costs no
extra VRAM. Noise comes from per-request CPU generators; diffusers' ``randn_tensor``
draws each batch element from its own generator, so a batched request gets the
same latents as it would alone.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

# Concrete submodules, not ``from diffusers import``: the package root's TYPE_CHECKING
# branch also imports placeholder classes, which hides the real ones from mypy.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img import (
    StableDiffusionXLImg2ImgPipeline,
)
from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteScheduler
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from . import tokenizer as tok
from ._noise import draw_noise_in_float32
from ._placement import cache_placement
from .base import (
    CancelToken,
    ImageToImageRequest,
    Limits,
    ModelAdapter,
    ModelSpec,
    PipelineKind,
    Preset,
    ProgressCallback,
    Request,
    StageTimer,
    StepProgress,
    TextToImageRequest,
    check_output_size,
    make_generator,
    to_uint8_rgb,
)
from .errors import ModelLoadError, ParameterError
from .outputs import RawImage, RawOutput, decode_image_bytes
from .weights import (
    diffusers_weight_files,
    hash_modules,
    hash_weight_files,
    locate_diffusers_weights,
    tiny_init,
    tokenizer_files,
)

TINY_SEED = 20261123  # changing it changes tiny-sdxl's weights hash

# What from_pretrained reads for an SDXL pipeline; folders need at least one weights file.
SDXL_REQUIRED_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/",
    "text_encoder_2/config.json",
    "text_encoder_2/",
    tokenizer_files("tokenizer"),
    tokenizer_files("tokenizer_2"),
    "unet/config.json",
    "unet/",
    "vae/config.json",
    "vae/",
)

_PIPELINES = frozenset({PipelineKind.TEXT_TO_IMAGE, PipelineKind.IMAGE_TO_IMAGE})

TINY_SDXL = ModelSpec(
    name="tiny-sdxl",
    model_id="lpnode/tiny-sdxl",
    family="sdxl",
    pipelines=_PIPELINES,
    limits=Limits(max_pixels=256 * 256, max_side=256, max_steps=50, max_batch=8),
    vram_bytes=64 * 2**20,
    tiny=True,
    defaults={"width": 64, "height": 64, "num_inference_steps": 2, "guidance_scale": 0.0},
)

SDXL_TURBO = ModelSpec(
    name="sdxl-turbo",
    model_id="stabilityai/sdxl-turbo",
    family="sdxl",
    pipelines=_PIPELINES,
    limits=Limits(max_pixels=1024 * 1024, max_side=1024, max_steps=50, max_batch=8),
    # fp16: UNet 2.57B params (5.1 GB) + both text encoders (1.6 GB) + VAE upcast to fp32
    # for decoding (0.3 GB) + activations at 512×512; leaves headroom for batches of a few.
    vram_bytes=9 * 2**30,
    tiny=False,
    defaults={"width": 512, "height": 512, "num_inference_steps": 1, "guidance_scale": 0.0},
    weights_subdir="sdxl-turbo",
    source="stabilityai/sdxl-turbo",
)


def _tiny_text_config() -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=tok.VOCAB_SIZE,
        bos_token_id=tok.BOS_TOKEN_ID,
        eos_token_id=tok.EOS_TOKEN_ID,
        pad_token_id=tok.EOS_TOKEN_ID,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=tok.MAX_LENGTH,
        projection_dim=32,
        hidden_act="gelu",
    )


def build_tiny_sdxl_modules(seed: int = TINY_SEED) -> dict[str, torch.nn.Module]:
    """The four weighted modules of tiny-sdxl, identical on every build with the same torch."""
    with tiny_init(seed):
        text_encoder = CLIPTextModel(_tiny_text_config())
        text_encoder_2 = CLIPTextModelWithProjection(_tiny_text_config())
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            transformer_layers_per_block=(1, 2),
            cross_attention_dim=64,  # hidden sizes of both text encoders, concatenated
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 time ids × 8 + pooled text (32)
            norm_num_groups=8,
        )
        # Four blocks, like SDXL's VAE: latents are 1/8 of the image side, so the size
        # rules and the latent shapes match the real model's.
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=64,
            scaling_factor=0.13025,
            force_upcast=False,
        )
    return {"text_encoder": text_encoder, "text_encoder_2": text_encoder_2, "unet": unet, "vae": vae}


def turbo_scheduler() -> EulerAncestralDiscreteScheduler:
    """SDXL-Turbo's scheduler config, so tiny runs take the same stepping path."""
    scheduler: EulerAncestralDiscreteScheduler = EulerAncestralDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
        steps_offset=1,
        prediction_type="epsilon",
    )
    return scheduler


class StableDiffusionXLAdapter(ModelAdapter):
    """SDXL text-to-image and image-to-image over one set of shared modules."""

    def __init__(self, spec: ModelSpec, weights_dir: Path | None) -> None:
        super().__init__(spec, weights_dir)
        self._t2i: StableDiffusionXLPipeline | None = None
        self._i2i: StableDiffusionXLImg2ImgPipeline | None = None

    # lifecycle -----------------------------------------------------------------------------

    def _load(self, device: torch.device, dtype: torch.dtype) -> None:
        draw_noise_in_float32()  # the same noise for a seed in any dtype, on any torch (models/_noise.py)
        components = self._tiny_components() if self.spec.tiny else self._real_components(dtype)
        t2i = StableDiffusionXLPipeline(**components)
        # A second scheduler object: schedulers keep per-call state (timesteps, step index).
        i2i_components = components | {"scheduler": type(components["scheduler"]).from_config(t2i.scheduler.config)}
        i2i = StableDiffusionXLImg2ImgPipeline(**i2i_components, requires_aesthetics_score=False)
        for pipe in (t2i, i2i):
            pipe.set_progress_bar_config(disable=True)  # type: ignore[no-untyped-call]
        t2i.to(device, dtype)
        for pipe in (t2i, i2i):
            cache_placement(pipe)  # diffusers walks every module for the device on each call (models/_placement.py)
        self._t2i, self._i2i = t2i, i2i

    def _tiny_components(self) -> dict[str, Any]:
        modules = build_tiny_sdxl_modules()
        self._weights_sha256 = self._weights_sha256 or hash_modules(modules)
        tokenizer = tok.byte_level_clip_tokenizer()
        return {**modules, "tokenizer": tokenizer, "tokenizer_2": tokenizer, "scheduler": turbo_scheduler()}

    def _real_components(self, dtype: torch.dtype) -> dict[str, Any]:
        folder, variant = locate_diffusers_weights(self.spec, self.weights_dir, SDXL_REQUIRED_FILES)
        try:
            pipe = StableDiffusionXLPipeline.from_pretrained(
                folder, torch_dtype=dtype, variant=variant, local_files_only=True, use_safetensors=None
            )
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelLoadError(f"cannot load {self.spec.name} from {folder}: {exc}") from exc
        return dict(pipe.components)

    def _unload(self) -> None:
        self._t2i = self._i2i = None

    def _modules(self) -> Mapping[str, torch.nn.Module]:
        if self._t2i is None:
            if self.spec.tiny:  # param_count of a tiny preset needs no load
                return build_tiny_sdxl_modules()
            return {}
        p = self._t2i
        return {"text_encoder": p.text_encoder, "text_encoder_2": p.text_encoder_2, "unet": p.unet, "vae": p.vae}

    def _compute_weights_sha256(self) -> str:
        if self.spec.tiny:
            return hash_modules(build_tiny_sdxl_modules())
        folder, variant = locate_diffusers_weights(self.spec, self.weights_dir, SDXL_REQUIRED_FILES)
        return hash_weight_files(folder, diffusers_weight_files(folder, variant))

    # running -------------------------------------------------------------------------------

    def check_inputs(self, request: Request) -> None:
        super().check_inputs(request)
        if isinstance(request, ImageToImageRequest):
            image = decode_image_bytes(request.image)
            check_output_size(self.spec.limits, image.width, image.height)
            # img2img runs only the last strength × steps of the schedule; zero steps is no job.
            if int(request.num_inference_steps * request.strength) < 1:
                raise ParameterError(
                    "strength", request.strength, f">= {1 / request.num_inference_steps:.3g} for this step count"
                )

    def batch_key(self, request: Request) -> Hashable | None:
        if isinstance(request, TextToImageRequest):
            return (request.kind, request.width, request.height, request.num_inference_steps, request.guidance_scale)
        if isinstance(request, ImageToImageRequest):
            size = decode_image_bytes(request.image).size
            return (request.kind, size, request.num_inference_steps, request.guidance_scale, request.strength)
        return None

    def _generate(
        self, requests: Sequence[Request], cancel: CancelToken, progress: ProgressCallback
    ) -> list[RawOutput]:
        timer = StageTimer()
        first = requests[0]
        # Stage 1: per-request generators (CPU, so noise is identical on any hardware).
        generators = [make_generator(r.seed) for r in requests]
        prompts = [r.prompt for r in requests if isinstance(r, TextToImageRequest | ImageToImageRequest)]
        negatives = [r.negative_prompt for r in requests if isinstance(r, TextToImageRequest | ImageToImageRequest)]
        callback = _step_callback(cancel, progress)
        # Stage 2: denoise and decode (text encoding and latent preparation happen inside),
        # then quantise on the device: uint8 pixels are all that leave the device stage.
        with timer.stage("pipeline"):
            if isinstance(first, TextToImageRequest):
                assert self._t2i is not None
                result = self._t2i(
                    prompt=prompts,
                    negative_prompt=negatives if first.guidance_scale > 1 else None,
                    width=first.width,
                    height=first.height,
                    num_inference_steps=first.num_inference_steps,
                    guidance_scale=first.guidance_scale,
                    generator=generators,
                    output_type="pt",
                    callback_on_step_end=callback,
                )
            elif isinstance(first, ImageToImageRequest):
                assert self._i2i is not None
                images = [decode_image_bytes(r.image) for r in requests if isinstance(r, ImageToImageRequest)]
                result = self._i2i(
                    prompt=prompts,
                    negative_prompt=negatives if first.guidance_scale > 1 else None,
                    image=images,
                    strength=first.strength,
                    num_inference_steps=first.num_inference_steps,
                    guidance_scale=first.guidance_scale,
                    generator=generators,
                    output_type="pt",
                    callback_on_step_end=callback,
                )
            else:  # check_inputs already refused other kinds
                raise AssertionError(f"unexpected request {type(first).__name__}")
            pixels = to_uint8_rgb(result.images)
        # Encoding and fingerprints are the output stage (ModelAdapter.finish), run off the device.
        return [RawImage(image, dict(timer.ms)) for image in pixels]


def _step_callback(cancel: CancelToken, progress: ProgressCallback) -> Any:
    """diffusers' ``callback_on_step_end``: report the step, then stop if cancelled.

    Raising here aborts the pipeline call before the next UNet evaluation and
    before VAE decoding, which is the expensive part a cancelled job should skip.
    """

    def on_step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        progress(StepProgress("denoise", step + 1, int(getattr(pipe, "num_timesteps", 0) or 0)))
        cancel.raise_if_cancelled()
        return kwargs

    return on_step_end


PRESETS: tuple[Preset, ...] = (
    Preset(TINY_SDXL, StableDiffusionXLAdapter),
    Preset(SDXL_TURBO, StableDiffusionXLAdapter),
)
