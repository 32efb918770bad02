"""The entropy parameters: h_s(z_hat) -> the mean and the Gaussian table row of every y symbol.

The one step that maps network output into the coder's world: the residuals are coded with the
table rows it picks, and the receiver adds its mean back. Encoder and decoder must compute it
bit-identically, so it always runs on the host CPU, in float32, whatever accelerator runs the other
networks (on one CPU type XLA's result depends on neither thread nor device count). Everything
after it is integer arithmetic on frozen tables. It is kept apart so that it can become integer
arithmetic itself (planned, see docs/bitstream.md), which would make files portable across CPUs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from hybridflow_jax.codec.tables import scale_to_index
from hybridflow_jax.models.hybridflow import HybridFlow


def on_host_cpu(model: HybridFlow, params: Mapping[str, Any], scales: np.ndarray
                ) -> Callable[[np.ndarray, tuple[int, int]], tuple[np.ndarray, np.ndarray]]:
  """The entropy-parameter function of `model` with `params`, pinned to the host CPU:
  (z_hat int [hz, wz, Nz], (h, w)) -> (mean float32 [h, w, M], table row int32 [h, w, M]).

  scales: float64 [L], the Gaussian scale of each row of the y table.
  """
  cpu = jax.devices("cpu")[0]
  hs_params = jax.device_put(HybridFlow.entropy_parameter_params(params), cpu)
  program = jax.jit(lambda p, z, hw: model.apply({"params": p}, z, hw,
                                                 method=HybridFlow.entropy_parameters),
                    static_argnums=2)

  def entropy_parameters(z_hat: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    z = jax.device_put(np.asarray(z_hat, np.float32)[None], cpu)
    mean, scale = program(hs_params, z, tuple(hw))
    return np.asarray(mean[0]), scale_to_index(np.asarray(scale[0]), scales)

  return entropy_parameters
