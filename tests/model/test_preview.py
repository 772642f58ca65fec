"""model/preview.py: the fitted latent-to-RGB map, and the denoising loop's current estimate."""

import io

import numpy as np
import torch
from PIL import Image

from model.pipeline import OviPipeline, StepInfo, denoise
from model.preview import LatentPreview, colour_blocks, png_bytes


def test_the_fitted_map_recovers_colours_of_unseen_images(tiny_pipeline: OviPipeline):
    vae = tiny_pipeline.video_vae
    preview = LatentPreview.fit(vae)
    assert preview.weight.shape == (vae.config.z_dim, 3) and preview.bias.shape == (3,)
    # held-out images (another seed): the map's error against the per-patch mean colour, and
    # against the best constant guess (the mean colour of all patches)
    pixels = colour_blocks(2, 128, 32, seed=123)
    latents = vae.encode_image(pixels)  # [2, 48, 1, 8, 8]
    truth = torch.nn.functional.avg_pool2d(pixels, 16)  # [2, 3, 8, 8]
    guess = torch.stack(
        [torch.from_numpy(preview(latents[i : i + 1], frame=0)) for i in range(2)]
    )  # [2, 8, 8, 3] uint8
    guess = guess.permute(0, 3, 1, 2).float() / 127.5 - 1
    err = (guess - truth).pow(2).mean()
    baseline = (truth - truth.mean(dim=(0, 2, 3), keepdim=True)).pow(2).mean()
    print(f"preview map: mse {err:.4f} vs constant guess {baseline:.4f}")
    assert err < 0.75 * baseline  # measured 0.51x with the random-weight tiny VAE


def test_preview_is_one_latent_frame_as_png():
    preview = LatentPreview(torch.zeros(48, 3), torch.tensor([1.0, 0.0, -1.0]))
    rgb = preview(torch.randn(1, 48, 5, 4, 6))  # the middle frame by default
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 6, 3)
    assert rgb[0, 0].tolist() == [255, 128, 0]
    image = Image.open(io.BytesIO(png_bytes(rgb)))
    assert image.format == "PNG" and image.size == (6, 4)


def test_the_callback_gets_the_clean_estimate(tiny_pipeline: OviPipeline):
    """Euler's last step lands exactly on its x0 estimate (sigma 0): the last `denoised` is the
    loop's result; earlier ones are the flow estimate x_t - sigma_t * v, not the noisy x_t."""
    pipe = tiny_pipeline
    params = pipe.preset.sampling.replace(steps=3, solver="euler", seed=0)
    texts = pipe.encode_prompt("a red ball", "blur", "noise")
    video, audio = pipe.prepare_latents(0, 64, 64)
    seen: list[StepInfo] = []
    with torch.no_grad():
        out_video, _ = denoise(pipe.fusion, video, audio, *texts, params, callback=seen.append)
    assert [s.step for s in seen] == [1, 2, 3]
    assert all(s.denoised.shape == out_video.shape for s in seen)
    torch.testing.assert_close(seen[-1].denoised, out_video, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(seen[0].denoised, video)
