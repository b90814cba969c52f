"""The bundled mini world: generate.py (one seeded world), teacher.py (the scripted expert), build.py (the data
set of many worlds; `python -m litere.world build OUT`)."""
from .build import BuildConfig, build, load_manifest, training_texts
from .generate import World, WorldQuestion, WorldSize, train_world_seed

__all__ = ["BuildConfig", "World", "WorldQuestion", "WorldSize", "build", "load_manifest", "train_world_seed",
           "training_texts"]
