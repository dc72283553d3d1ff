"""Image-to-video with Stable Video Diffusion.

Two presets:

* ``tiny-svd``: the SVD architecture (UNetSpatioTemporalConditionModel,
  AutoencoderKLTemporalDecoder with the ×8 downsampling, CLIPVisionModelWithProjection)
  at toy widths with random weights from a fixed seed. The vision encoder keeps
  ``image_size=224`` because the pipeline resizes the conditioning image to
  224×224 before encoding it; ``patch_size=14`` keeps that cheap (DESIGN.md).
* ``svd-xt``: ``stabilityai/stable-video-diffusion-img2vid-xt`` in diffusers
  layout under ``<weights_dir>/svd-xt``, loaded with ``local_files_only=True``.

The conditioning image is center-cropped to the requested aspect ratio and
resized here, with a fixed PIL filter, rather than stretched by the pipeline:
the result must not depend on which resize the installed diffusers happens to use.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

# Concrete submodules: see the note in sd.py.
from diffusers.models.autoencoders.autoencoder_kl_temporal_decoder import AutoencoderKLTemporalDecoder
from diffusers.models.unets.unet_spatio_temporal_condition import UNetSpatioTemporalConditionModel
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    StableVideoDiffusionPipeline,
)
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from PIL import Image, ImageOps
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from ._noise import draw_noise_in_float32
from ._placement import cache_placement
from .base import (
    CancelToken,
    ImageToVideoRequest,
    Limits,
    ModelAdapter,
    ModelSpec,
    PipelineKind,
    Preset,
    ProgressCallback,
    Request,
    StageTimer,
    StepProgress,
    make_generator,
    to_uint8_rgb,
)
from .errors import ModelLoadError
from .outputs import RawOutput, RawVideo, decode_image_bytes
from .weights import diffusers_weight_files, hash_modules, hash_weight_files, locate_diffusers_weights, tiny_init

TINY_SEED = 20261124  # changing it changes tiny-svd's weights hash
# The conditioning image is centre-cropped and resized to the clip's size (at most 1024×576 on
# svd-xt, 128×128 on tiny-svd) before the pipeline sees it, so pixels beyond a 4K photo's add nothing
# to the clip; they only cost the worker memory, twice per job (check_inputs and _generate decode it),
# where a 420 KB PNG can say 12000×12000. Refused from the header, before a pixel is decoded. The
# node refuses the same bound before the pool (lpnode.node.input_probe.MAX_CONDITIONING_PIXELS, kept
# equal by tests/models/test_input_bounds.py), and requesters before any peer is asked.
MAX_CONDITIONING_PIXELS = 4096 * 4096

SVD_REQUIRED_FILES = (
    "model_index.json",
    "feature_extractor/preprocessor_config.json",
    "image_encoder/config.json",
    "image_encoder/",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "unet/",
    "vae/config.json",
    "vae/",
)

TINY_SVD = ModelSpec(
    name="tiny-svd",
    model_id="lpnode/tiny-svd",
    family="svd",
    pipelines=frozenset({PipelineKind.IMAGE_TO_VIDEO}),
    limits=Limits(max_pixels=128 * 128, max_side=128, max_steps=50, max_frames=16, max_batch=4),
    vram_bytes=128 * 2**20,
    tiny=True,
    defaults={"width": 64, "height": 64, "num_frames": 4, "num_inference_steps": 2, "decode_chunk_size": 4},
)

SVD_XT = ModelSpec(
    name="svd-xt",
    model_id="stabilityai/stable-video-diffusion-img2vid-xt",
    family="svd",
    pipelines=frozenset({PipelineKind.IMAGE_TO_VIDEO}),
    limits=Limits(max_pixels=1024 * 576, max_side=1024, max_steps=50, max_frames=25, max_batch=2),
    # Measured on an H100 (DESIGN.md): 16.1 GB peak for 25 frames at 576×1024 with guidance.
    vram_bytes=17 * 2**30,
    tiny=False,
    defaults={
        "width": 1024,
        "height": 576,
        "num_frames": 25,
        "num_inference_steps": 25,
        "fps": 7,
        "decode_chunk_size": 8,
    },
    weights_subdir="svd-xt",
    source="stabilityai/stable-video-diffusion-img2vid-xt",
)


def build_tiny_svd_modules(seed: int = TINY_SEED) -> dict[str, torch.nn.Module]:
    """The three weighted modules of tiny-svd, identical on every build with the same torch."""
    with tiny_init(seed):
        unet = UNetSpatioTemporalConditionModel(
            sample_size=8,
            in_channels=8,  # noisy latents + the conditioning image's latents
            out_channels=4,
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
            block_out_channels=(32, 64),  # the spatio-temporal blocks use 32 norm groups
            layers_per_block=1,
            cross_attention_dim=32,  # the image encoder's projection_dim
            num_attention_heads=(2, 4),
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=3 * 8,  # fps, motion bucket, noise aug × 8
            num_frames=16,
        )
        vae = AutoencoderKLTemporalDecoder(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            block_out_channels=(32, 32, 32, 32),  # no norm_num_groups option: 32 is the minimum
            layers_per_block=1,
            latent_channels=4,
            sample_size=64,
            force_upcast=False,
        )
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=32,
                projection_dim=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=37,
                image_size=224,
                patch_size=14,
            )
        )
    return {"image_encoder": image_encoder, "unet": unet, "vae": vae}


def svd_scheduler() -> EulerDiscreteScheduler:
    """SVD-XT's published scheduler config (Karras sigmas, v-prediction, continuous timesteps)."""
    scheduler: EulerDiscreteScheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        use_karras_sigmas=True,
    )
    return scheduler


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Center-crop to the target aspect ratio, then resize (Lanczos)."""
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


class StableVideoDiffusionAdapter(ModelAdapter):
    """SVD image-to-video; the output stage encodes it as an H.264 MP4 at the requested fps."""

    def __init__(self, spec: ModelSpec, weights_dir: Path | None) -> None:
        super().__init__(spec, weights_dir)
        self._pipe: StableVideoDiffusionPipeline | None = None

    def _load(self, device: torch.device, dtype: torch.dtype) -> None:
        draw_noise_in_float32()  # the same noise for a seed in any dtype, on any torch (models/_noise.py)
        if self.spec.tiny:
            modules = build_tiny_svd_modules()
            self._weights_sha256 = self._weights_sha256 or hash_modules(modules)
            # Any: the pipeline's annotations name diffusers' placeholder classes under mypy.
            components: dict[str, Any] = {**modules, "scheduler": svd_scheduler()}
            pipe = StableVideoDiffusionPipeline(**components, feature_extractor=CLIPImageProcessor())
        else:
            folder, variant = locate_diffusers_weights(self.spec, self.weights_dir, SVD_REQUIRED_FILES)
            try:
                pipe = StableVideoDiffusionPipeline.from_pretrained(
                    folder, torch_dtype=dtype, variant=variant, local_files_only=True
                )
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                raise ModelLoadError(f"cannot load {self.spec.name} from {folder}: {exc}") from exc
        pipe.set_progress_bar_config(disable=True)  # type: ignore[no-untyped-call]
        pipe.to(device, dtype)
        cache_placement(pipe)  # diffusers walks every module for the device on each call (models/_placement.py)
        self._pipe = pipe

    def _unload(self) -> None:
        self._pipe = None

    def _modules(self) -> Mapping[str, torch.nn.Module]:
        if self._pipe is None:
            return build_tiny_svd_modules() if self.spec.tiny else {}
        return {"image_encoder": self._pipe.image_encoder, "unet": self._pipe.unet, "vae": self._pipe.vae}

    def _compute_weights_sha256(self) -> str:
        if self.spec.tiny:
            return hash_modules(build_tiny_svd_modules())
        folder, variant = locate_diffusers_weights(self.spec, self.weights_dir, SVD_REQUIRED_FILES)
        return hash_weight_files(folder, diffusers_weight_files(folder, variant))

    def check_inputs(self, request: Request) -> None:
        super().check_inputs(request)
        if isinstance(request, ImageToVideoRequest):
            # Undecodable input fails here, not mid-run; its size is read from the header and
            # refused before any pixel is decoded.
            decode_image_bytes(request.image, max_pixels=MAX_CONDITIONING_PIXELS)

    def batch_key(self, request: Request) -> Hashable | None:
        if not isinstance(request, ImageToVideoRequest):
            return None
        r = request
        # Everything but the image and the seed shapes the computation or its conditioning.
        return (
            r.width,
            r.height,
            r.num_frames,
            r.fps,
            r.motion_bucket_id,
            r.noise_aug_strength,
            r.num_inference_steps,
            r.min_guidance_scale,
            r.max_guidance_scale,
            r.decode_chunk_size,
        )

    def _generate(
        self, requests: Sequence[Request], cancel: CancelToken, progress: ProgressCallback
    ) -> list[RawOutput]:
        assert self._pipe is not None
        videos = [r for r in requests if isinstance(r, ImageToVideoRequest)]
        first = videos[0]
        timer = StageTimer()
        # Stage 1: conditioning images at the output size, and per-request CPU generators.
        with timer.stage("prepare"):
            images = [
                fit_image(decode_image_bytes(r.image, max_pixels=MAX_CONDITIONING_PIXELS), r.width, r.height)
                for r in videos
            ]
            generators = [make_generator(r.seed) for r in videos]
        # Stage 2: denoise and decode all frames, quantised on the device (see to_uint8_rgb).
        with timer.stage("pipeline"):
            result = self._pipe(
                image=images,
                width=first.width,
                height=first.height,
                num_frames=first.num_frames,
                num_inference_steps=first.num_inference_steps,
                min_guidance_scale=first.min_guidance_scale,
                max_guidance_scale=first.max_guidance_scale,
                fps=first.fps,
                motion_bucket_id=first.motion_bucket_id,
                noise_aug_strength=first.noise_aug_strength,
                decode_chunk_size=first.decode_chunk_size,
                generator=generators,
                output_type="pt",
                callback_on_step_end=_step_callback(cancel, progress),
            )
            videos_rgb = to_uint8_rgb(result.frames)  # batch × frames × H × W × 3
        # H.264 encoding is the output stage (ModelAdapter.finish), run off the device.
        return [RawVideo(tuple(video), float(first.fps), dict(timer.ms)) for video in videos_rgb]


def _step_callback(cancel: CancelToken, progress: ProgressCallback) -> Any:
    """Report each denoising step, then stop before the next one (and before decoding) if cancelled."""

    def on_step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        progress(StepProgress("denoise", step + 1, int(getattr(pipe, "num_timesteps", 0) or 0)))
        cancel.raise_if_cancelled()
        return kwargs

    return on_step_end


PRESETS: tuple[Preset, ...] = (
    Preset(TINY_SVD, StableVideoDiffusionAdapter),
    Preset(SVD_XT, StableVideoDiffusionAdapter),
)
