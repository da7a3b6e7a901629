"""Fixtures of the pipeline tests: a tiny random base on disk and a small Ray per module.

Ray tests run serially and share one small Ray instance per module (4 logical
CPUs, a 200 MB object store): on a 2-core machine a Ray Train worker group can
take tens of seconds to start, so each start is paid as rarely as possible.
"""

from __future__ import annotations

import pytest

from pipeline_support import start_ray


@pytest.fixture(scope="session")
def debug_base_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random debug-size unet3d base saved as a diffusers folder (the shipped base is not needed)."""
    from diffusers import TextToVideoSDPipeline

    from motioncrafter.toyworld.model import debug_base

    folder = tmp_path_factory.mktemp("debug_base")
    b = debug_base("unet3d")
    TextToVideoSDPipeline(vae=b.vae, text_encoder=b.text_encoder, tokenizer=b.tokenizer, unet=b.unet,
                          scheduler=b.scheduler).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    start_ray()
    yield
    ray.shutdown()
