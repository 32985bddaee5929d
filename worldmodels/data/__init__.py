"""HDF5 episode files: schemas, the crash-safe :class:`EpisodeWriter` and the validating :class:`EpisodeFile`.

See ``docs/data.md`` for the layout, field by field.
"""

from worldmodels.data.files import EpisodeFile, EpisodeFiles, open_latents, open_rollouts, split_paths
from worldmodels.data.writer import EpisodeWriter
from worldmodels.data.schema import EPISODE_DTYPE, LATENTS, ROLLOUTS, SCHEMAS, Field, Schema

__all__ = ["EPISODE_DTYPE", "LATENTS", "ROLLOUTS", "SCHEMAS", "EpisodeFile", "EpisodeFiles", "EpisodeWriter", "Field",
           "Schema", "open_latents", "open_rollouts", "split_paths"]
