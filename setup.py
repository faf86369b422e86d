"""vljepa-jax: VL-JEPA (arXiv 2512.10942) in JAX/Flax Linen."""
import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent


def _requirements():
  lines = (HERE / "requirements.txt").read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


setuptools.setup(
    name="vljepa-jax",
    version="0.1.0",
    description="VL-JEPA: joint embedding predictive architecture for vision-language, in JAX/Flax.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["vljepa_jax", "vljepa_jax.*"]),
    install_requires=_requirements(),
    extras_require={
        # torch is only used to read .bin/.pt checkpoints and as the parity reference.
        # The exact pin matters: torch==2.13.0 on PyPI is the CPU build, a looser spec
        # pulls the multi-GB CUDA build.
        "test": [
            "pytest>=8,<10",
            # The README's test line runs the suite on 2 workers, a test file per worker (loadfile keeps a
            # module's fixtures in one process): about 25% less wall time on 2 cores, where compiling is
            # single-threaded.
            "pytest-xdist>=3.5,<4",
            "chex>=0.1.90,<0.2",
            "torch==2.13.0",
            "transformers>=5.0,<6",
            "safetensors>=0.4,<1",
            # TFDS sources are tested offline with tfds.testing.mock_data; TensorFlow is not needed.
            "tensorflow-datasets>=4.9.10,<5",
            # Independent readers/references: TensorBoard's event loader for our event files,
            # scikit-learn's top-k accuracy and Ward clustering for the ranking metrics and
            # selective decoding.
            "tensorboard>=2.21,<3",
            "scikit-learn>=1.9,<2",
            # CIDEr-D reference (its Cider scorer is pure Python; the Java tools it bundles are unused).
            "pycocoevalcap==1.2",
            # The W&B logger is tested offline, read back from wandb's own run file.
            "wandb>=0.31,<1",
        ],
        "torch": ["torch==2.13.0"],
        "tfds": ["tensorflow-datasets>=4.9.10,<5"],
        # Weights & Biases logging (`config.wandb.project`); about 75 MB installed.
        "wandb": ["wandb>=0.31,<1"],
    },
)
