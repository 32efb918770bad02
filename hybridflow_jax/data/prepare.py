"""`hybridflow prepare-data`: image collections -> TFDS array_record data sets that grain reads.

    # any folders of images (no TensorFlow needed):
    hybridflow prepare-data folder --name my_photos --split train=/data/photos/train \
        --split validation=/data/photos/val --data-dir /data/tfds
    #   -> train with --config.data.train=tfds:my_photos/train@/data/tfds

    # ImageNet from the archives downloaded by hand (ILSVRC2012_img_train.tar, ..._val.tar):
    hybridflow prepare-data imagenet2012 --manual-dir /data/imagenet --data-dir /data/tfds
    # OpenImages V4 (TFDS downloads it):
    hybridflow prepare-data open_images_v4 --data-dir /data/tfds

The folder path writes each file's bytes unchanged (no re-encoding) after checking that Pillow can
read it; unreadable files are listed and left out. The `imagenet2012` and `open_images_v4` builders
are TFDS's own; they use TensorFlow to read archives and fix a few images, so they need the
`prepare` extra (`pip install -e ".[prepare]"`). Reading the prepared data never needs TensorFlow.
"""

from __future__ import annotations

import pathlib
import re

import tensorflow_datasets as tfds

from hybridflow_jax import imageio
from hybridflow_jax.errors import UserError

# A TFDS data set or split name.
TFDS_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _files(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in folder.rglob("*")
                if p.is_file() and p.suffix.lower() in imageio.IMAGE_EXTENSIONS)


def _readable(path: pathlib.Path) -> bytes | None:
  """The file's bytes if Pillow can fully decode it, else None."""
  try:
    data = path.read_bytes()
    imageio.decode(data)  # a full decode: truncated files fail here
    return data
  except Exception:  # noqa: BLE001  (any reason a file cannot be read means: leave it out)
    return None


def prepare_folder(name: str, splits: dict[str, str], data_dir: str, log=print) -> str:
  """Writes the array_record data set `name` (one split per folder); returns its data spec."""
  if not TFDS_NAME.match(name):
    raise UserError(f"--name {name!r}: use lower-case letters, digits and '_' (a TFDS name)")
  lists = {}
  for split, folder in splits.items():
    root = pathlib.Path(folder).expanduser()
    if not root.is_dir():
      raise UserError(f"--split {split}={folder}: not a directory")
    files = _files(root)
    if not files:
      raise UserError(f"--split {split}={folder}: no image files "
                      f"({', '.join(imageio.IMAGE_EXTENSIONS)})")
    lists[split] = files
  target = pathlib.Path(data_dir) / name
  if target.exists() and any(target.iterdir()):
    raise UserError(f"{target} exists; choose another --name or --data-dir (nothing was changed)")
  skipped: list[str] = []

  def examples(files):
    for i, path in enumerate(files):
      data = _readable(path)
      if data is None:
        skipped.append(str(path))
        continue
      yield i, {"image": data}

  camel = "".join(part.capitalize() for part in name.split("_"))
  with tfds.core.registered.skip_registration():
    builder_cls = type(camel, (tfds.core.GeneratorBasedBuilder,), {
        "VERSION": tfds.core.Version("1.0.0"),
        "__module__": __name__,
        # Built here, not from a TFDS source folder: no checksums file, no code path to look up.
        "code_path": None,
        "url_infos": None,
        "_info": lambda self: tfds.core.DatasetInfo(
            builder=self, description=f"Images of {', '.join(map(str, splits.values()))}, "
                                      "written by hybridflow prepare-data",
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(None, None, 3))})),
        "_split_generators": lambda self, dl_manager: {
            split: self._generate_examples(files) for split, files in lists.items()},
        "_generate_examples": lambda self, files: examples(files),
    })
  builder = builder_cls(data_dir=str(data_dir), file_format="array_record")
  if builder.name != name:
    raise UserError(f"--name {name!r}: TFDS would call it {builder.name!r}; use that name")
  builder.download_and_prepare()
  for path in skipped:
    log(f"left out (unreadable): {path}")
  for split in splits:
    log(f"{split}: {builder.info.splits[split].num_examples} images")
  return f"tfds:{name}/{next(iter(splits))}@{data_dir}"


def prepare_tfds(builder_name: str, data_dir: str, manual_dir: str | None, log=print) -> str:
  """TFDS's own builder into array_record (needs TensorFlow); returns a data spec."""
  try:
    import tensorflow  # noqa: F401
  except ImportError:
    raise UserError(f"{builder_name}: TFDS's builder needs TensorFlow; install the extra: "
                    "pip install -e '.[prepare]' (or prepare a folder of images instead)") from None
  if builder_name == "imagenet2012":
    if not manual_dir:
      raise UserError("imagenet2012 needs --manual-dir with ILSVRC2012_img_train.tar and/or "
                      "ILSVRC2012_img_val.tar (downloaded by hand from image-net.org)")
    found = [f for f in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar",
                         "ILSVRC2012_img_test.tar") if (pathlib.Path(manual_dir) / f).is_file()]
    if not found:
      raise UserError(f"--manual-dir {manual_dir}: no ILSVRC2012_img_{{train,val,test}}.tar there")
    log(f"archives: {', '.join(found)}")
  builder = tfds.builder(builder_name, data_dir=data_dir, file_format="array_record")
  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  builder.download_and_prepare(download_config=config)
  for split, info in builder.info.splits.items():
    log(f"{split}: {info.num_examples} examples")
  return f"tfds:{builder_name}/train@{data_dir}"
