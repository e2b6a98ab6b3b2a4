"""Which pydicom pixel-data plugins the Lambda bundle carries: coverage, unzipped size and licence of each.

Run: `.venv/bin/python bench/dicom_plugins.py [--json bench/results/dicom-plugins.json]` (needs the dev
requirements: every candidate plugin is installed there, and pip to fetch the runtime's wheels).
Coverage: each accepted transfer syntax of the test corpus (``tests/dicom_corpus.py``, made from a
sample X-ray) decoded with pydicom told to use that plugin alone. Size and licence: the plugin's
wheel for the Lambda runtime (CPython 3.14, manylinux x86_64), unzipped, and its metadata.
"""

from __future__ import annotations

import argparse
import email.parser
import json
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pydicom.pixels import pixel_array  # noqa: E402

import dicom_corpus  # noqa: E402
from lambdas.domain import dicom  # noqa: E402

CANDIDATES = {  # pydicom plugin name -> the wheels it needs beyond pydicom
    "pydicom": [],
    "pillow": [],
    "gdcm": ["python-gdcm"],
    "pylibjpeg": ["pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle"],
    "pyjpegls": ["pyjpegls"],
}
LICENCE_FIELDS = ("License-Expression", "License")


def coverage() -> dict[str, list[str]]:
    """Plugin -> the compressed syntaxes of the corpus it decodes to the expected pixels."""
    decoded: dict[str, set[str]] = {plugin: set() for plugin in CANDIDATES}
    for case in dicom_corpus.corpus():
        if case.reason is not None:
            continue
        ds = dicom.read(case.data)
        syntax = ds.file_meta.TransferSyntaxUID
        if syntax in dicom.NATIVE_SYNTAXES:
            continue
        for plugin in CANDIDATES:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    pixel_array(ds, decoding_plugin=plugin)
            except Exception:  # noqa: BLE001 (not available for this syntax, or failed: either way not covered)
                continue
            decoded[plugin].add(dicom.TRANSFER_SYNTAXES[syntax])
    return {plugin: sorted(syntaxes) for plugin, syntaxes in decoded.items()}


def wheels(names: list[str]) -> list[dict]:
    """Each wheel for the Lambda runtime: file, unzipped size, licence."""
    if not names:
        return []
    with tempfile.TemporaryDirectory() as folder:
        found = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--platform",
             "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64", "--implementation", "cp",
             "--python-version", "3.14", "-d", folder, *names], capture_output=True, text=True)
        result = []
        for wheel in sorted(Path(folder).glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                size = sum(info.file_size for info in archive.infolist())
                metadata_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
                metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode())
            licence = next((metadata[f] for f in LICENCE_FIELDS if metadata[f]), None) or "; ".join(
                c for c in metadata.get_all("Classifier", []) if c.startswith("License"))
            result.append({"wheel": wheel.name, "unzipped_mb": round(size / 1e6, 1), "licence": licence})
        missing = set(names) - {w["wheel"].split("-")[0].replace("_", "-").lower() for w in result}
        result += [{"wheel": name, "unzipped_mb": None, "licence": None,
                    "error": "no wheel for CPython 3.14 manylinux x86_64"} for name in sorted(missing)]
        if found.returncode and not result:
            raise SystemExit(found.stderr)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    decoded = coverage()
    report = {plugin: {"decodes": decoded[plugin], "wheels": wheels(names)} for plugin, names in CANDIDATES.items()}
    report["compressed syntaxes"] = sorted(set(dicom.TRANSFER_SYNTAXES.values()) - {
        dicom.TRANSFER_SYNTAXES[s] for s in dicom.NATIVE_SYNTAXES})
    report["pylibjpeg-libjpeg (not a candidate)"] = {"wheels": wheels(["pylibjpeg-libjpeg"])}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
