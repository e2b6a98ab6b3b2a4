"""The normaliser: its output contract, every rejection reason, and property tests."""

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps

import corpus
from lambdas.domain import imaging

ROOT = Path(__file__).resolve().parents[2]


def assert_output_contract(result: imaging.NormalisedImage, original_size: tuple[int, int]) -> Image.Image:
    image = Image.open(io.BytesIO(result.png))
    assert image.format == "PNG" and image.mode == "L"
    assert image.size == (result.width, result.height)
    assert max(image.size) <= imaging.STORED_MAX_SIDE
    ow, oh = original_size
    if max(ow, oh) <= imaging.STORED_MAX_SIDE:
        assert image.size == (ow, oh)  # never enlarged, never resampled needlessly
    else:
        scale = imaging.STORED_MAX_SIDE / max(ow, oh)
        assert abs(image.width - ow * scale) <= 1 and abs(image.height - oh * scale) <= 1  # aspect kept
    assert len(result.image_id) == 32 and result.image_id == result.content_hash[:32]
    return image


@pytest.mark.parametrize("name", sorted(corpus.broken_corpus()))
def test_each_broken_input_gets_its_specific_reason(name):
    data, code = corpus.broken_corpus()[name]
    with pytest.raises(imaging.RejectedImage) as caught:
        imaging.normalise(data)
    assert caught.value.code == code, caught.value.message
    assert caught.value.message


def test_size_cap_is_checked_without_reading():
    imaging.check_upload_size(imaging.MAX_UPLOAD_BYTES)
    with pytest.raises(imaging.RejectedImage, match="over the 30 MiB cap"):
        imaging.check_upload_size(imaging.MAX_UPLOAD_BYTES + 1)
    with pytest.raises(imaging.RejectedImage) as caught:
        imaging.check_upload_size(0)
    assert caught.value.code == "empty"


@pytest.mark.parametrize("kind", [b"IHDR", b"IDAT", b"tEXt", b"IEND"])
def test_every_png_chunk_crc_is_checked(kind):
    """Pillow never checks IEND's CRC; the normaliser checks every chunk's before decoding."""
    imaging.normalise(corpus.png_with_text())  # whole, it is accepted
    with pytest.raises(imaging.RejectedImage) as caught:
        imaging.normalise(corpus.png_bad_crc(kind))
    assert caught.value.code == "corrupt" and kind.decode() in caught.value.message


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
@pytest.mark.parametrize("keep", [0.3, 0.85])
def test_jpeg_cut_short_and_closed_with_an_end_marker_is_truncated(mode, keep):
    """It decodes without an error (libjpeg fills the rest with grey); the fill below the content gives it away."""
    with pytest.raises(imaging.RejectedImage) as caught:
        imaging.normalise(corpus.jpeg_cut_then_closed(keep, mode))
    assert caught.value.code == "truncated" and "fill" in caught.value.message


@pytest.mark.parametrize("border", [0, 255])
def test_uniform_film_borders_are_not_taken_for_a_fill(border):
    """A collimated film's uniform edge is black or white, not the decoder's exact mid-grey."""
    result = imaging.normalise(corpus.jpeg_cut_then_closed(keep=2.0, border=border))  # keep > 1: nothing cut
    pixels = np.asarray(assert_output_contract(result, (320, 256)))
    assert np.abs(pixels[-20:].astype(int) - border).max() <= 2  # the border survived, the image was accepted


def test_an_all_grey_jpeg_is_blank_not_truncated():
    with pytest.raises(imaging.RejectedImage) as caught:
        imaging.normalise(corpus.encode(Image.new("L", (64, 64), 128), "JPEG"))
    assert caught.value.code == "blank"


@pytest.mark.parametrize(
    "data", [corpus.jpeg_declaring(7000, 7000), corpus.png_bomb_header(7000, 7000)], ids=["jpeg", "png"]
)
def test_a_large_header_on_a_small_file_is_rejected_before_decoding(data, monkeypatch):
    """1.2 KB cannot hold 49 MP of X-ray: rejected from the header, before 49 MP are allocated."""
    assert len(data) < 2000

    def no_decoding(self):
        raise AssertionError("decoded a file the header alone rules out")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(imaging.RejectedImage, match="7000x7000") as caught:
        imaging.normalise(data)
    assert caught.value.code == "truncated"


def test_sixteen_bit_conversion_is_exact():
    """The table lookup gives what float64 arithmetic gave: round((v - min) * 255 / (max - min))."""
    data = corpus.png_16bit(240, 200)  # small enough to be stored unresampled
    values = np.asarray(Image.open(io.BytesIO(data))).astype(np.float64)
    expected = np.round((values - values.min()) * (255.0 / (values.max() - values.min()))).astype(np.uint8)
    stored = np.asarray(Image.open(io.BytesIO(imaging.normalise(data).png)))
    assert np.array_equal(stored, expected)


def test_sixteen_bit_conversion_makes_no_full_size_numpy_copies():
    """9 MP of 16-bit grey: float64 copies of it took 72 MB each; strips through a table stay a few MB."""
    data = corpus.png_16bit_large(3000)
    tracemalloc.start()
    try:
        imaging.normalise(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3000 * 3000, f"numpy/Python peak {peak / 2**20:.1f} MB for a 9 MP image"


def test_exif_orientation_survives_the_mode_conversion():
    """RGBA is converted to grayscale before the transpose (a quarter of the memory): the orientation must follow."""
    exif = Image.Exif()
    exif[0x0112] = 6
    rgba = Image.fromarray(corpus.chest_like(240, 160)).convert("RGBA")
    result = imaging.normalise(corpus.encode(rgba, "PNG", exif=exif.tobytes()))
    assert (result.width, result.height) == (160, 240)


def test_sixteen_bit_is_rescaled_not_clipped():
    result = imaging.normalise(corpus.png_16bit(240, 200))  # small enough to be stored unresampled
    pixels = np.asarray(assert_output_contract(result, (240, 200)))
    assert result.original_mode.startswith("I")
    assert pixels.min() == 0 and pixels.max() == 255  # the 12-bit range fills 8 bits
    assert 40 < pixels.mean() < 200  # clipping would have made it (nearly) all white


def test_alpha_is_composited_onto_black():
    result = imaging.normalise(corpus.png_rgba())
    pixels = np.asarray(assert_output_contract(result, (300, 240)))
    assert (pixels[:, :60] == 0).all()  # the transparent quarter (64 px once shrunk) is black
    assert pixels[:, 80:].mean() > 40


def test_exif_orientation_is_applied():
    result = imaging.normalise(corpus.jpeg_exif_rotated(240, 160))
    assert (result.width, result.height) == (160, 240)
    assert (result.original_width, result.original_height) == (240, 160)


@pytest.mark.parametrize(
    ("data", "mode"),
    [(corpus.png_palette(), "P"), (corpus.jpeg_cmyk(), "CMYK"), (corpus.jpeg(), "L"), (corpus.png(), "L")],
)
def test_palette_cmyk_and_plain_grayscale_are_accepted(data, mode):
    result = imaging.normalise(data)
    assert result.original_mode == mode
    assert_output_contract(result, (result.original_width, result.original_height))


def colour_photo(width: int = 320, height: int = 240) -> Image.Image:
    """Saturated colour fields with texture, as in a photograph of fruit or a stained slide."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    rgb = np.stack([200 * np.sin(6 * xx) ** 2, 180 * np.cos(5 * yy) ** 2, 220 * (xx * yy)], axis=-1)
    return Image.fromarray(np.uint8(np.clip(rgb + rng.normal(0, 10, rgb.shape), 0, 255)))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_strongly_coloured_image_is_not_a_radiograph(fmt):
    with pytest.raises(imaging.RejectedImage) as raised:
        imaging.normalise(corpus.encode(colour_photo(), fmt))
    assert raised.value.code == "not_a_radiograph"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("black, white", [((40, 20, 0), (255, 235, 200)), ((10, 20, 40), (200, 225, 255))],
                         ids=["sepia scan", "light-box photo"])
def test_a_tinted_x_ray_is_accepted(fmt, black, white):
    tinted = ImageOps.colorize(Image.fromarray(corpus.chest_like()), black, white)
    assert imaging.colourfulness(tinted) > 10  # tinted indeed, yet far below the limit
    assert_output_contract(imaging.normalise(corpus.encode(tinted, fmt)), tinted.size)


def test_grey_in_any_mode_has_no_colour():
    gray = Image.fromarray(corpus.chest_like())
    for mode in ("L", "RGB", "RGBA", "P", "CMYK"):
        assert imaging.colourfulness(gray.convert(mode)) == pytest.approx(0.0, abs=1e-9), mode


def test_wrong_extension_does_not_matter_content_decides(tmp_path):
    assert imaging.normalise(corpus.png()).original_format == "PNG"  # whatever the file was called
    assert imaging.normalise(corpus.jpeg()).original_format == "JPEG"


def test_full_resolution_samples_shrink_with_aspect_kept():
    for path in sorted((ROOT / corpus.SAMPLES).rglob("*.jpeg")):
        result = imaging.normalise(path.read_bytes())
        assert_output_contract(result, (result.original_width, result.original_height))


def wire_cases() -> list[tuple[str, bytes]]:
    """The benchmark's inputs (every full-resolution sample), and PNGs of each mode the normaliser converts."""
    samples = [(path.name, path.read_bytes()) for path in sorted((ROOT / corpus.SAMPLES).rglob("*.jpeg"))]
    return samples + [("png", corpus.png()), ("png-16bit", corpus.png_16bit()), ("png-rgba", corpus.png_rgba()),
                      ("png-palette", corpus.png_palette()), ("jpeg-exif-rotated", corpus.jpeg_exif_rotated())]


def test_the_endpoints_request_carries_exactly_the_stored_pixels_uncompressed():
    """The predict function sends ``wire_png``, not the stored ``png``: the endpoint must see the same model input
    (same pixels, same content hash), and the request must skip deflate (every pixel byte is in the file)."""
    for name, data in wire_cases():
        image = imaging.normalise(data)
        received = imaging.normalise(image.wire_png)  # what the endpoint's input_fn makes of the request
        assert received.content_hash == image.content_hash, name
        assert np.array_equal(np.asarray(received.stored), np.asarray(Image.open(io.BytesIO(image.png)))), name
        for policy in imaging.RESIZE_POLICIES:
            assert np.array_equal(imaging.to_model_input(received.stored, 128, policy),
                                  imaging.to_model_input(image.stored, 128, policy)), name
        assert len(image.wire_png) > image.width * image.height, name  # every pixel byte: stored, not deflated


def test_content_hash_is_deterministic_and_content_addressed():
    first, second = imaging.normalise(corpus.png(seed=1)), imaging.normalise(corpus.png(seed=1))
    assert first.png == second.png and first.image_id == second.image_id
    assert imaging.normalise(corpus.png(seed=2)).image_id != first.image_id
    # the same pixels arriving as PNG or re-encoded losslessly give the same id
    again = corpus.encode(Image.open(io.BytesIO(corpus.png(seed=1))), "PNG", compress_level=1)
    assert imaging.normalise(again).image_id == first.image_id


@pytest.mark.parametrize("policy", imaging.RESIZE_POLICIES)
def test_model_input_policies(policy):
    stored = Image.fromarray(corpus.chest_like(256, 200))
    array = imaging.to_model_input(stored, 64, policy)
    assert array.shape == (64, 64) and array.dtype == np.float32
    assert 0.0 <= array.min() and array.max() <= 1.0
    if policy == "pad":
        assert array[0].max() == 0.0  # top rows are padding
    with pytest.raises(ValueError):
        imaging.to_model_input(stored, 64, "crop")


def test_equalized_input_does_not_depend_on_the_acquisition_contrast_curve():
    """Another machine's exposure (a monotone curve on the grey levels) gives the same model input."""
    stored = Image.fromarray(corpus.chest_like(256, 200))
    flatter = stored.point(lambda v: round(60 + 120 * (v / 255) ** 1.6))  # darker, low-contrast, gamma-bent
    same, other = (imaging.to_model_input(image, 64, "squash", "equalize") for image in (stored, flatter))
    linear = [imaging.to_model_input(image, 64, "squash") for image in (stored, flatter)]
    assert np.abs(same - other).mean() < np.abs(linear[0] - linear[1]).mean() / 4  # only quantisation is left
    assert same.max() - same.min() > 0.9  # spread over the whole range
    with pytest.raises(ValueError, match="intensity"):
        imaging.to_model_input(stored, 64, "squash", "clahe")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=4096))
def test_random_bytes_are_rejected_never_crash(data):
    try:
        imaging.normalise(data)
    except imaging.RejectedImage as exc:
        assert exc.code and exc.message


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.integers(28, 700),
    height=st.integers(28, 700),
    mode=st.sampled_from(["L", "RGB", "RGBA", "LA", "P", "I;16", "CMYK"]),
    fmt=st.sampled_from(["PNG", "JPEG"]),
    seed=st.integers(0, 2**16),
)
def test_random_valid_images_meet_the_output_contract(width, height, mode, fmt, seed):
    if max(width, height) / min(width, height) > imaging.MAX_ASPECT:
        height = width
    if fmt == "JPEG" and mode not in ("L", "RGB", "CMYK"):
        fmt = "PNG"
    if fmt == "PNG" and mode == "CMYK":
        fmt = "JPEG"
    gray = np.random.default_rng(seed).integers(0, 256, size=(height, width), dtype=np.uint8)
    gray[0, 0], gray[-1, -1] = 0, 255  # guarantee contrast
    image = Image.fromarray(gray)
    if mode == "I;16":
        image = Image.fromarray(gray.astype(np.uint16) * 257)
    elif mode != "L":
        image = image.convert(mode)
    result = imaging.normalise(corpus.encode(image, fmt))
    assert_output_contract(result, (width, height))
