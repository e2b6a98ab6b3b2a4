import pytest

from lambdas.domain import labels, layout, source_names


@pytest.mark.parametrize(
    ("key", "label", "patient", "split"),
    [
        ("raw/kermany/train/NORMAL/IM-0115-0001.jpeg", "normal", "0115", "train"),
        ("raw/kermany/train/NORMAL/NORMAL2-IM-1427-0001.jpeg", "normal", "1427", "train"),
        ("raw/kermany/test/PNEUMONIA/person1946_bacteria_4874.jpeg", "bacterial", "1946", "test"),
        ("raw/kermany/val/PNEUMONIA/person1000_virus_1681.jpeg", "viral", "1000", "val"),
        ("raw/ds/pneumonia/scan_0001.png", "pneumonia", None, None),
        ("raw/ds/Bacterial/x.png", "bacterial", None, None),
        ("raw/ds/VIRAL/x.png", "viral", None, None),
        ("raw/ds/validation/Covid-19/x.png", "covid-19", None, "val"),
        ("raw/ds/extra/deeper/NORMAL/x.png", "normal", None, None),
    ],
)
def test_label_patient_and_split_from_key(key, label, patient, split):
    dataset, info = layout.parse_raw_key(key)
    assert (info.label, info.patient_id, info.split) == (label, patient, split)
    assert dataset == key.split("/")[1]


@pytest.mark.parametrize(
    "key",
    ["raw/ds/x.jpeg", "raw/ds/train/x.jpeg", "raw/x.jpeg", "raw/ds/NORMAL/", "incoming/ds/NORMAL/x.png"],
)
def test_keys_without_a_label_folder_are_refused(key):
    with pytest.raises((layout.KeyLayoutError, labels.UnlabelledError)):
        layout.parse_raw_key(key)


def test_class_set_is_derived_from_the_data():
    assert labels.class_set({"normal", "bacterial", "viral"}) == ["bacterial", "normal", "viral"]
    assert labels.class_set({"normal", "pneumonia"}) == ["normal", "pneumonia"]
    # sub-types known for only part of the data: binary view
    assert labels.class_set({"normal", "bacterial", "pneumonia"}) == ["normal", "pneumonia"]
    assert labels.training_label("viral", ["normal", "pneumonia"]) == "pneumonia"
    with pytest.raises(KeyError):
        labels.training_label("covid", ["normal", "pneumonia"])


def test_key_layout():
    assert layout.quarantine_key("raw/ds", "s-1") == "quarantine/raw/ds/s-1.error.json"
    assert layout.prediction_key("s-2") == "predictions/s-2.json"
    assert layout.rejected_key("s-3") == "rejected/s-3.error.json"
    assert layout.structured_report_key("s-4") == "results-dicom/s-4.sr.dcm"


def test_s3_uris_split_into_bucket_and_key():
    assert layout.split_s3_uri("s3://b/models/r/x.tar.gz") == ("b", "models/r/x.tar.gz")
    assert layout.split_s3_uri("s3://b/") == ("b", "")
    for bad in ("https://b/x", "s3://", "b/x"):
        with pytest.raises(ValueError):
            layout.split_s3_uri(bad)


def test_an_uploads_name_is_stable_keyed_and_says_nothing_of_its_key():
    key = "raw/ds/NORMAL/DOE_JOHN_MRN1234567_chest.dcm"
    name = source_names.name(b"k" * 32, "b", key)
    assert name == source_names.name(b"k" * 32, "b", key)  # every version, event and delete of the key
    assert name.startswith("s-") and len(name) == 34 and "DOE" not in name and "1234567" not in name
    assert name != source_names.name(b"j" * 32, "b", key)  # without the secret, no guess can be confirmed
    assert name != source_names.name(b"k" * 32, "other", key)
    assert source_names.pointer_key(key, name) == f"raw/.names/{name}"
    assert source_names.is_pointer(f"incoming/.names/{name}") and not source_names.is_pointer(key)


@pytest.mark.parametrize(
    ("name", "series", "patient"),
    [
        ("IM-0115-0001.jpeg", "IM-", "0115"),
        ("IM-0117-0001-0002.jpeg", "IM-", "0117"),
        ("NORMAL2-IM-0002-0001.jpeg", "NORMAL2-IM-", "0002"),
        ("person2_virus_13.jpeg", "person", "2"),
        ("person1000_bacteria_2931.jpeg", "person", "1000"),
        ("scan_0001.png", None, None),
    ],
)
def test_patient_series_is_the_numbering_the_id_belongs_to(name, series, patient):
    """IM-0383 and NORMAL2-IM-0383 share a number but not a numbering (bench proxies order each series)."""
    assert (labels.patient_series(name), labels.patient_id(name)) == (series, patient)
