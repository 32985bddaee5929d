"""The three models of World Models: V (ConvVAE), M (MDRNN), C (Controller)."""

from worldmodels.models.vae import ConvVAE, frames_to_tensor, load_vae, vae_loss
from worldmodels.models.controller import ActionMap, BatchedController, Controller, make_action_map
from worldmodels.models.mdrnn import MDRNN, MDRNNOutput, gmm_nll, load_mdrnn, mdrnn_loss, sample_gmm
