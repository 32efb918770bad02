"""`hybridflow ablate`: the paper's two claims, measured on held-out photos with real files.

For every image, from one finished run (`--workdir`), each row is a real file decoded:

  hybrid S            the codec's file at schedule S (each fixed schedule, and dynamic)
  codebook-only S     the same file, its tokens completed by the transformer, rendered by G_vq
                      (the pixel decoder the tokenizer was trained with) instead of the bridge:
                      what the continuous stream adds in the pixels (claim 1: fidelity)
  hybrid y=0 1_4      the 1_4 file decoded with y_hat zeroed (transformer and bridge): whether
                      the decoder uses the continuous stream at all
  continuous head     the hybrid's own side stream (y_hat, z_hat) alone, decoded by the light head
                      the continuous stage trained it with: what y_hat carries by itself
  continuous-only     the run's `baseline` stage, a mean-scale hyperprior codec with its own full
                      synthesis transform trained for the same rate as the hybrid's 1_4 (claim 2:
                      perception at matched bits); its file is the container with a payload of the
                      z and y streams only, coded with its own frozen tables, and decoded back
  avif                Pillow's AVIF at the hybrid's 1_4 rate: its lowest quality costs more at
                      full size, so the image may be coded scaled down and scaled back up
                      (`baselines.at_rate`: of the scales whose file is within 10 % of the rate,
                      the one with the best PSNR)

bpp is always the file's size (the codebook-only and y=0 rows are decodings of the hybrid's file,
so they carry its bpp). PSNR, MS-SSIM and LPIPS (AlexNet) per image, and for the hybrid's points
the transformer's accuracy on the indices the file did not send (`token_acc`); the means go to
`ablation.json`, `ablation.md` (a table), `ablation.png` (bpp against PSNR and LPIPS) and
`panel.png` (the first image: original | hybrid per schedule | codebook-only 1_4 |
continuous-only | AVIF, with bpp and PSNR under each). `checks` (in the JSON, and a second table)
states each claim on those means: hybrid vs codebook-only PSNR, continuous-only's rate against the
hybrid's (the LPIPS ratio is judged only when the two are within 10 %), the PSNR order of the fixed
schedules, and dynamic against the line between the fixed points around its bpp.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from hybridflow_jax import schedules as schedules_lib
from hybridflow_jax import stages
from hybridflow_jax.codec import bundle as bundle_lib
from hybridflow_jax.codec import container, payload
from hybridflow_jax.codec.api import Codec, greyscale, to_uint8
from hybridflow_jax.codec.coder import Decoder, Encoder
from hybridflow_jax.data import pipeline
from hybridflow_jax.errors import UserError
from hybridflow_jax.evaluation import baselines, loop, visual
from hybridflow_jax.evaluation.measures import Measures
from hybridflow_jax.models import hybridflow as hf
from hybridflow_jax.models.transformer import decode_tokens
from hybridflow_jax.train import checkpoint as ckpt_lib
from hybridflow_jax.train import export
from hybridflow_jax.train.rundir import RunDir

SCHEDULES = ("1_4", "1_9", "1_16", schedules_lib.DYNAMIC)
REFERENCE_POINT = "1_4"      # the point the y=0, continuous-only and AVIF rows are matched to
METRICS = ("bpp", "psnr-rgb", "ms-ssim-rgb", "lpips-alex", "token_acc")
FILES = ("ablation.json", "ablation.md", "ablation.png", "panel.png", *visual.FILES)


class _Decoders:
  """The receiver-side renderings of one hybrid file: hybrid, codebook-only, and y_hat zeroed."""

  def __init__(self, model: hf.HybridFlow, params, codebook: bool = True):
    """codebook=False: no codebook-only rendering (G_vq is untrained in a fine-tuned run)."""
    self.params = params
    steps = model.config.transformer.decode_steps
    k = model.config.vq.num_codes

    def render(params, indices, keep, y_hat):
      p = {"params": params}
      predict = lambda t, c: model.apply(p, t, c, method=hf.HybridFlow.predict_tokens)
      tokens = decode_tokens(predict, indices[None], keep[None], y_hat[None], k, steps)
      hybrid = model.apply(p, tokens, y_hat[None], method=hf.HybridFlow.render)
      zero = jnp.zeros_like(y_hat)[None]
      tokens0 = decode_tokens(predict, indices[None], keep[None], zero, k, steps)
      without_y = model.apply(p, tokens0, zero, method=hf.HybridFlow.render)
      out = {"hybrid": hybrid[0], "hybrid y=0": without_y[0], "tokens": tokens[0]}
      if codebook:
        out["codebook-only"] = model.apply(p, tokens, method=hf.HybridFlow.render_codebook)[0]
      return out
    self._render = jax.jit(render)

  def __call__(self, frame: payload.Frame) -> dict[str, np.ndarray]:
    out = self._render(self.params, jnp.asarray(frame.index_grid()), jnp.asarray(frame.keep),
                       jnp.asarray(frame.y_hat()))
    tokens = np.asarray(out.pop("tokens"))
    images = {}
    for name, image in out.items():
      image = np.asarray(image)[:frame.height, :frame.width]
      # A greyscale file renders grey in every row, as Codec.decompress renders it.
      images[name] = to_uint8(greyscale(image) if frame.grey else image)
    return images, tokens


class ContinuousOnlyCodec:
  """A continuous-only codec of the run with real bitstreams: a hyperprior frozen into tables
  exactly as `hybridflow export` freezes the hybrid's, a file that holds the z and y streams of
  `codec.payload` only, and a synthesis transform from y_hat to pixels.

  stream: the hyperprior's params (the layout of `params["continuous"]`); synthesize: a flax
  method (module, y_hat [1, h, w, M]) -> image, applied to `params`; prior_images: how many
  training images calibrate its integer entropy parameters, as export does.
  """

  def __init__(self, config, params, stream, synthesize, prior_images: int | None):
    self.model = hf.build_model(config)
    self.params = params
    # The hybrid codec's machinery on this hyperprior: a bundle whose `continuous` params are the
    # stream's (its index table is never used).
    swapped = dict(params)
    swapped["continuous"] = {**params["continuous"], **stream}
    measured = export.measure_tiles(self.model, swapped, config.data.train,
                                    int(config.eval_size), prior_images, log=lambda _: None)
    # Its index table is never used: uniform counts.
    counts = np.ones(int(config.model.vq.num_codes), np.int64)
    tables, scales, entropy_model, _ = export.build_tables(swapped, counts, measured.z)
    self.codec = Codec(bundle_lib.assemble(config.to_dict(), export.inference_params(swapped),
                                           tables, scales, entropy_model,
                                           {"note": "continuous-only (ablation)"}))
    model = self.model
    self._synthesize = jax.jit(lambda params, y_hat: model.apply(
        {"params": params}, y_hat[None], method=synthesize)[0])

  def compress(self, rgb: np.ndarray) -> bytes:
    lat = self.codec.analyze(rgb)
    frame = lat.frame(self.codec.coding, "1_1")
    enc = Encoder()
    for name in ("z", "y"):
      stream = next(s for s in payload.PAYLOAD if s.name == name)
      stream.coding(frame).encode(enc, frame.symbols[name])
    bs = container.Bitstream(lat.height, lat.width, self.codec.fingerprint,
                             schedules_lib.wire_id("1_1"), [enc.finish()], grey=lat.grey)
    return container.pack(bs)

  def decompress(self, data: bytes) -> np.ndarray:
    bs = container.unpack(data, expected_fingerprint=self.codec.fingerprint)
    frame = payload.Frame(self.codec.coding, bs.height, bs.width, "1_1")
    dec = Decoder(bs.sections[0])
    for name in ("z", "y"):
      stream = next(s for s in payload.PAYLOAD if s.name == name)
      frame.symbols[name] = stream.coding(frame).decode(dec)
    image = np.asarray(self._synthesize(self.params, jnp.asarray(frame.y_hat())))
    image = image[:bs.height, :bs.width]
    return to_uint8(greyscale(image) if bs.grey else image)


def load(workdir, *, baseline_workdir=None, prior_images: int | None = 1000,
         log: Callable[[str], None] = print):
  """(hybrid Codec, receiver decoders, {row name: continuous-only codec}, config) of a finished
  run. "continuous head" is the hybrid's own side stream through its light head; "continuous-only"
  the `baseline` stage of `baseline_workdir` (default: the run itself), if finished there.
  """
  config, params, provenance = export.load_run(workdir)
  bundle = export.make_bundle(config, params, prior_images=prior_images, provenance=provenance,
                              log=log)
  codec = Codec(bundle)
  # A fine-tuned run holds the training-only networks of the stages it did not train as its seed
  # made them: the rows they render would measure nothing.
  run = RunDir(workdir)
  seeded = stages.seeded_networks(
      config, [s for s in stages.stage_list(config) if run.stage(s).is_done()])
  def untrained(path, rows):
    if path in seeded:
      log(f"{stages.seeded_note(path, config, workdir)}: no {rows}")
    return path in seeded
  codebook = not untrained(("pixel_decoder",), "codebook-only rows")
  decoders = _Decoders(codec.model, jax.tree.map(jnp.asarray, params), codebook=codebook)
  full = dict(jax.tree.map(np.asarray, params))
  continuous = {}
  if not untrained(("continuous", "synthesis_head"), "continuous head row"):
    # The hybrid's own side stream decoded by the light head it was trained with.
    continuous["continuous head"] = ContinuousOnlyCodec(
        config, full, full["continuous"], lambda m, y: m.continuous.synthesis_head(y),
        prior_images)
  base_run = RunDir(baseline_workdir or workdir)
  stage = base_run.stage("baseline")
  if stage.is_done():
    # Built as its own run recorded it (another run's baseline may have trained another synthesis).
    base_config = base_run.read_config() if baseline_workdir else config
    base_model = hf.build_model(base_config)
    base = ckpt_lib.load_params(stage.params, hf.param_shapes(base_model))
    full["baseline"] = jax.tree.map(np.asarray, base["baseline"])
    continuous["continuous-only"] = ContinuousOnlyCodec(
        base_config, full, full["baseline"]["stream"], lambda m, y: m.baseline.synthesis(y),
        prior_images)
  else:
    log(f"no finished baseline stage in {baseline_workdir or workdir}: no continuous-only row")
  return codec, decoders, continuous, config


def run(codec: Codec, decoders: _Decoders, continuous: dict[str, ContinuousOnlyCodec],
        images: Sequence[tuple[str, np.ndarray]], out: pathlib.Path, *,
        schedules: Sequence[str] = SCHEDULES, avif: bool = True, report_images: int | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
  """Measures every row on every image; writes FILES into `out` (report.html with the crops of the
  first `report_images` images, all if None; none if 0); returns the results."""
  if REFERENCE_POINT not in schedules:
    raise UserError(f"the ablation needs the {REFERENCE_POINT} point among its schedules")
  measure = Measures()
  rows: list[dict[str, Any]] = []
  panel: dict[str, tuple[np.ndarray, dict]] = {}
  crops: list[visual.Crops] = []
  figures: visual.Figures = {}
  stems: set[str] = set()
  for n, (name, rgb) in enumerate(images):
    pixels = rgb.shape[0] * rgb.shape[1]
    shown: dict[tuple[str, str], np.ndarray] = {}
    for method, point, bits, decoded, extra in _decodings(codec, decoders, continuous, rgb,
                                                          schedules, avif):
      row = {"image": name, "method": method, "point": point, "bpp": bits / pixels,
             **measure(rgb, decoded), **extra}
      row.pop("lpips-vgg", None)
      rows.append(row)
      if n == 0:
        panel[f"{method} {point}".strip()] = (decoded, row)
      # In the report, the rows matched to the reference point sit in its line.
      at = point if point in schedules else REFERENCE_POINT
      shown[method, at] = decoded
      figures[name, method, at] = {**row, "note": "" if point in ("", at) else point}
    if report_images is None or len(crops) < report_images:
      stems.add(stem := loop.file_stem(name, stems))
      crops.append(visual.crops(name, stem, rgb, shown))
    log(f"ablation: {name} done ({n + 1}/{len(images)})")
  results = {"images": [name for name, _ in images], "rows": rows, "means": _means(rows)}
  results["checks"] = checks(results["means"])
  out.mkdir(parents=True, exist_ok=True)
  (out / "ablation.json").write_text(json.dumps(_json_safe(results), indent=1) + "\n")
  (out / "ablation.md").write_text(table(results) + "\n\n" + checks_table(results["checks"]) + "\n")
  _figure(results, out / "ablation.png")
  _panel(images[0], panel, out / "panel.png")
  visual.clear(out)
  if crops:
    _report(results, crops, figures, schedules, out)
  return results


def _report(results: dict[str, Any], crops: Sequence[visual.Crops], figures: visual.Figures,
            schedules: Sequence[str], out: pathlib.Path) -> None:
  """out/report.html: the crops of every row, a line per schedule (the rows matched to the
  reference point in its line), under the means and the checks."""
  shown = (("bpp", "{:.4f}"), ("psnr-rgb", "{:.2f}"), ("ms-ssim-rgb", "{:.4f}"),
           ("lpips-alex", "{:.4f}"), ("token_acc", "{:.3f}"))
  means = [[m["method"], m["point"], *(visual.figure(m[key], fmt) for key, fmt in shown)]
           for m in results["means"]]
  checks_rows = [[c["check"], c["measured"], "yes" if c["holds"] else
                  ("no" if c["holds"] is False else "not judged")] for c in results["checks"]]
  intro = (f"<p>{len(results['images'])} images. Means over every image, from real files:</p>"
           + visual.html_table(("method", "point", "bpp (file)", "PSNR (dB)", "MS-SSIM",
                                "LPIPS-Alex", "token acc."), means)
           + "<p>The paper's claims on these means:</p>"
           + visual.html_table(("check", "measured", "holds"), checks_rows))
  columns = [m for m in _STYLE if any(key[1] == m for key in figures)]
  visual.write(out, crops, figures, title="HybridFlow ablation", intro=intro, columns=columns,
               points=schedules)


def _decodings(codec: Codec, decoders: _Decoders, continuous: dict[str, ContinuousOnlyCodec],
               rgb: np.ndarray, schedules: Sequence[str], avif: bool):
  """(method, point, file bits, uint8 decoded image, extra columns) of every row on one image."""
  lat = codec.analyze(rgb)
  for schedule in schedules:
    c = codec.write(lat, schedule)
    frame = codec.read_symbols(c.data)
    decoded, tokens = decoders(frame)
    if not np.array_equal(decoded["hybrid"], codec.decompress(c.data)):
      raise RuntimeError("the ablation's hybrid decoding differs from Codec.decompress")
    bits = 8 * len(c.data)
    unsent = ~frame.keep
    # The transformer's accuracy on the indices the file did not send (NaN if it sent all).
    accuracy = float(np.mean(tokens[unsent] == lat.indices[unsent])) if unsent.any() else math.nan
    yield "hybrid", schedule, bits, decoded["hybrid"], {"token_acc": accuracy}
    if "codebook-only" in decoded:
      yield "codebook-only", schedule, bits, decoded["codebook-only"], {"token_acc": accuracy}
    if schedule == REFERENCE_POINT:
      yield "hybrid y=0", schedule, bits, decoded["hybrid y=0"], {}
      reference_bpp = bits / (rgb.shape[0] * rgb.shape[1])
  for method, cont in continuous.items():
    data = cont.compress(rgb)
    yield method, "", 8 * len(data), cont.decompress(data), {}
  if avif:
    f = baselines.at_rate(baselines.BASELINES["avif"], rgb, reference_bpp)
    yield "avif", f.label, 8 * len(f.data), f.decoded, {}


def _means(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  keys: list[tuple[str, str]] = []
  for r in rows:
    if (r["method"], r["point"]) not in keys:
      keys.append((r["method"], r["point"]))
  out = []
  for method, point in keys:
    mine = [r for r in rows if r["method"] == method and r["point"] == point]
    if method == "avif":  # a different quality per image: one line for all
      mine = [r for r in rows if r["method"] == method]
      point = "at hybrid 1_4"
      if any(m["method"] == "avif" for m in out):
        continue
    mean = {m: _nanmean([r.get(m, math.nan) for r in mine]) for m in METRICS}
    out.append({"method": method, "point": point, "images": len(mine), **mean})
  return out


# The paper's claims as the issue states them (hybrid at the reference point, means over images).
MATCHED_RATE_TOLERANCE = 0.10    # continuous-only's bpp within 10 % of the hybrid's
LPIPS_RATIO = 0.7                # hybrid LPIPS <= 0.7 x continuous-only's
FIDELITY_GAIN_DB = 2.0           # hybrid PSNR >= codebook-only + 2 dB


def checks(means: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """The paper's claims measured on these means: [{"check", "measured", "holds"}], one per claim
  whose rows are present. `holds` is None where the comparison is not valid (rates not matched)."""
  row = {(m["method"], m["point"]): m for m in means}
  hybrid = row.get(("hybrid", REFERENCE_POINT))
  if hybrid is None:
    return []
  out = []
  cb = row.get(("codebook-only", REFERENCE_POINT))
  if cb is not None:
    gain = hybrid["psnr-rgb"] - cb["psnr-rgb"]
    out.append({"check": f"hybrid PSNR >= codebook-only + {FIDELITY_GAIN_DB:g} dB "
                         f"({REFERENCE_POINT})",
                "measured": f"{hybrid['psnr-rgb']:.2f} vs {cb['psnr-rgb']:.2f} ({gain:+.2f} dB)",
                "holds": bool(gain >= FIDELITY_GAIN_DB)})
  cont = row.get(("continuous-only", ""))
  if cont is not None:
    rel = cont["bpp"] / hybrid["bpp"] - 1
    matched = abs(rel) <= MATCHED_RATE_TOLERANCE
    out.append({"check": f"continuous-only bpp within {MATCHED_RATE_TOLERANCE:.0%} of the "
                         f"hybrid's",
                "measured": f"{cont['bpp']:.4f} vs {hybrid['bpp']:.4f} ({rel:+.1%})",
                "holds": bool(matched)})
    ratio = hybrid["lpips-alex"] / cont["lpips-alex"]
    out.append({"check": f"hybrid LPIPS <= {LPIPS_RATIO:g} x continuous-only's",
                "measured": f"{hybrid['lpips-alex']:.4f} vs {cont['lpips-alex']:.4f} "
                            f"({ratio:.2f} x)",
                "holds": bool(ratio <= LPIPS_RATIO) if matched else None})
  fixed = sorted((m for m in means if m["method"] == "hybrid" and m["point"] in schedules_lib.FIXED),
                 key=lambda m: -schedules_lib.keep_ratio(m["point"]))
  if len(fixed) > 1:
    ordered = all(a["psnr-rgb"] >= b["psnr-rgb"] for a, b in zip(fixed, fixed[1:]))
    out.append({"check": "hybrid PSNR ordered " + " >= ".join(m["point"] for m in fixed),
                "measured": " >= ".join(f"{m['psnr-rgb']:.2f}" for m in fixed),
                "holds": bool(ordered)})
  dyn = row.get(("hybrid", schedules_lib.DYNAMIC))
  if dyn is not None and fixed:
    # The line through the fixed points that bracket dynamic's bpp (the nearest end outside them).
    pts = sorted(fixed, key=lambda m: m["bpp"])
    lo = max([m for m in pts if m["bpp"] <= dyn["bpp"]] or pts[:1], key=lambda m: m["bpp"])
    hi = min([m for m in pts if m["bpp"] > dyn["bpp"]] or pts[-1:], key=lambda m: m["bpp"])
    if hi is lo:
      line = lo["psnr-rgb"]
    else:
      t = (dyn["bpp"] - lo["bpp"]) / (hi["bpp"] - lo["bpp"])
      line = lo["psnr-rgb"] + t * (hi["psnr-rgb"] - lo["psnr-rgb"])
    out.append({"check": f"dynamic on or above the {lo['point']}-{hi['point']} line at its bpp",
                "measured": f"{dyn['psnr-rgb']:.3f} dB at {dyn['bpp']:.4f}; the line "
                            f"{line:.3f} ({dyn['psnr-rgb'] - line:+.3f})",
                "holds": bool(dyn["psnr-rgb"] >= line)})
  return out


def checks_table(rows: Sequence[dict[str, Any]]) -> str:
  """The checks as a markdown table."""
  word = {True: "holds", False: "does not hold", None: "not comparable (rates not matched)"}
  lines = ["| check | measured | |", "|---|---|---|"]
  lines += [f"| {r['check']} | {r['measured']} | {word[r['holds']]} |" for r in rows]
  return "\n".join(lines)


def _nanmean(values: Sequence[float]) -> float:
  finite = [v for v in values if math.isfinite(v)]
  return float(np.mean(finite)) if finite else math.nan


def table(results: dict[str, Any]) -> str:
  """The mean of every row as a markdown table."""
  lines = ["| method | point | bpp (file) | PSNR (dB) | MS-SSIM | LPIPS-Alex | token acc. |",
           "|---|---|---:|---:|---:|---:|---:|"]
  cell = lambda v, fmt: fmt.format(v) if math.isfinite(v) else "–"  # noqa: E731
  for m in results["means"]:
    lines.append(f"| {m['method']} | {m['point']} | {m['bpp']:.4f} | "
                 f"{cell(m['psnr-rgb'], '{:.2f}')} | {cell(m['ms-ssim-rgb'], '{:.4f}')} | "
                 f"{cell(m['lpips-alex'], '{:.4f}')} | {cell(m['token_acc'], '{:.3f}')} |")
  return "\n".join(lines)


_STYLE = {"hybrid": ("o-", "C0"), "codebook-only": ("s--", "C1"), "hybrid y=0": ("x", "C3"),
          "continuous-only": ("D", "C2"), "continuous head": ("d", "C5"), "avif": ("^", "C4")}


def _figure(results: dict[str, Any], path: pathlib.Path) -> None:
  fig = Figure(figsize=(10, 4), dpi=110)
  axes = fig.subplots(1, 2)
  for ax, metric, label in ((axes[0], "psnr-rgb", "PSNR (dB)"), (axes[1], "lpips-alex",
                                                                  "LPIPS-Alex (lower is better)")):
    for method, (marker, color) in _STYLE.items():
      pts = [m for m in results["means"] if m["method"] == method]
      if not pts:
        continue
      pts = sorted(pts, key=lambda m: m["bpp"])
      ax.plot([m["bpp"] for m in pts], [m[metric] for m in pts], marker, color=color, label=method)
      for m in pts:
        if m["point"] and method in ("hybrid", "codebook-only"):
          ax.annotate(m["point"], (m["bpp"], m[metric]), fontsize=6)
    ax.set_xlabel("bits per pixel (real files)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.suptitle(f"ablation, mean of {len(results['images'])} held-out images", fontsize=9)
  fig.tight_layout()
  fig.savefig(path)


def _panel(first: tuple[str, np.ndarray], panel: dict[str, tuple[np.ndarray, dict]],
           path: pathlib.Path) -> None:
  name, rgb = first
  shown = [k for k in panel if k.startswith("hybrid ") and "y=0" not in k]
  shown += [k for k in panel if k == f"codebook-only {REFERENCE_POINT}"]
  shown += [k for k in panel if k.startswith(("continuous", "avif"))]
  fig = Figure(figsize=(2.8 * (len(shown) + 1), 2.8 * rgb.shape[0] / rgb.shape[1] + 0.6), dpi=120)
  axes = fig.subplots(1, len(shown) + 1, squeeze=False)[0]
  axes[0].imshow(rgb)
  axes[0].set_title(f"original ({name.rsplit('/', 1)[-1][-24:]})", fontsize=7)
  for ax, key in zip(axes[1:], shown):
    image, row = panel[key]
    ax.imshow(image)
    ax.set_title(key, fontsize=7)
    ax.set_xlabel(f"{row['bpp']:.4f} bpp, {row['psnr-rgb']:.2f} dB", fontsize=7)
  for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path)


def images_of(specs: dict[str, str], limit: int | None,
              log: Callable[[str], None] = print) -> list[tuple[str, np.ndarray]]:
  """(name, uint8 [H, W, 3]) of every readable image of the data specs, in order."""
  out = []
  for data_name, spec in specs.items():
    for image_name, rgb in pipeline.readable_images(spec, limit, log):
      out.append((f"{data_name}/{image_name}", rgb))
  if not out:
    raise UserError("the ablation's data has no readable images")
  return out


def _json_safe(x):
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _json_safe(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_json_safe(v) for v in x]
  if isinstance(x, np.generic):
    return _json_safe(x.item())
  return x

