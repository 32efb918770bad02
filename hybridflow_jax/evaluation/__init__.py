"""Evaluation from real files (`hybridflow eval`): every image compressed to a file, decoded, measured.

For each data set, each image and each operating point: compress to a file, decompress it, and
measure bpp (file bytes x 8 / pixels), bpp estimated by the model, PSNR-RGB, MS-SSIM-RGB,
LPIPS-Alex, LPIPS-VGG, encoding and decoding seconds (after one untimed warm-up per image shape, so
no compilation is timed; wall clock on this process's devices). The same images are coded live by
JPEG, WebP and (where Pillow writes it) AVIF, each at the real bpp of each of our operating points
on that image (`baselines.at_rate`: coded smaller and scaled back up where the full size cannot
get that low).

    loop.py        the loop over images and operating points -> per-image rows
    measures.py    PSNR, MS-SSIM, LPIPS of a reconstruction
    baselines.py   the Pillow codecs and their quality search
    report.py      results.json (CompressAI's layout plus ours), per_image.csv, summary.csv, the table
    plots.py       rd_psnr.png, rd_ms-ssim.png, rd_lpips.png (with reference curves), grid.png
    visual.py      report.html: crops of every codec's decoded images side by side, with sliders
    references.py  published curves: reference_curves/<dataset>/*.json, installed with the package

`docs/results.md` describes the files; `hybridflow_jax/commands/eval.py` is the command.
"""
