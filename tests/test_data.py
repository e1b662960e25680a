"""Real data: sources, column detection, the decode cache, splits, normalisation and ZCA, bad input."""

from __future__ import annotations

import pytest
import torch

from pdd_hub.data import ImageSet, Preprocess, ZCAWhitening, load_real_data, stratified_split
from pdd_hub.data import sources as sources_mod
from pdd_hub.errors import DatasetFormatError
from pdd_hub.selection import random_stage_indices
from tests.helpers import write_image_folder


def test_embedded_digits_is_offline_and_grey_8px(digits):
    assert digits.image_shape == (1, 8, 8)
    assert digits.class_names == [str(d) for d in range(10)]
    assert len(digits.train) + len(digits.val) == 1437 and len(digits.test) == 360
    assert digits.train.images.dtype == torch.uint8 and digits.train.images.max() == 255


def test_cifar10_local_hub_folder(cifar10):
    assert cifar10.source.image_column == "img" and cifar10.source.label_column == "label"
    assert cifar10.image_shape == (3, 32, 32)
    assert len(cifar10.train) == 50_000 - 200 and len(cifar10.val) == 200 and len(cifar10.test) == 10_000
    assert cifar10.class_names[0] == "airplane"
    assert cifar10.val.class_counts() == [20] * 10


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (3, 64)])
def test_keeps_channels_and_size(tmp_path, channels, size):
    folder = write_image_folder(tmp_path / "ds", channels=channels, size=size)
    data = load_real_data(str(folder), val_per_class=1)
    assert data.image_shape == (channels, size, size)
    assert data.test.image_shape == (channels, size, size)


def test_column_overrides_and_detection_by_name(tmp_path):
    folder = write_image_folder(tmp_path / "ds", image_column="pixels", label_column="fine_label")
    # "pixels" is not a well-known name: found by its Image feature type
    data = load_real_data(str(folder), val_per_class=1)
    assert (data.source.image_column, data.source.label_column) == ("pixels", "fine_label")
    data = load_real_data(str(folder), val_per_class=1, image_column="pixels", label_column="fine_label")
    assert data.num_classes == 3


def test_decode_cache_makes_second_load_skip_decoding(tmp_path, monkeypatch):
    folder = write_image_folder(tmp_path / "ds")
    first = load_real_data(str(folder), val_per_class=1, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "decoded").glob("*.safetensors"))

    def boom(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(sources_mod, "_decode_images", boom)
    second = load_real_data(str(folder), val_per_class=1, cache_dir=tmp_path / "cache")
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels)


def test_stratified_validation_split_is_seeded_and_disjoint(digits):
    whole = ImageSet(
        torch.cat([digits.train.images, digits.val.images]),
        torch.cat([digits.train.labels, digits.val.labels]),
        digits.class_names,
    )
    rest_a, val_a = stratified_split(whole, 5, seed=1)
    _, val_b = stratified_split(whole, 5, seed=1)
    _, val_c = stratified_split(whole, 5, seed=2)
    assert torch.equal(val_a.images, val_b.images) and not torch.equal(val_a.images, val_c.images)
    assert val_a.class_counts() == [5] * 10
    assert len(rest_a) + len(val_a) == len(whole)
    assert sum(c for c in rest_a.class_counts()) == len(whole) - 50
    # disjoint and complete: tag every example with its index and follow the tags
    tagged = ImageSet(torch.arange(len(whole)).view(-1, 1, 1, 1), whole.labels, whole.class_names)
    rest_t, val_t = stratified_split(tagged, 5, seed=1)
    rest_ids, val_ids = set(rest_t.images.flatten().tolist()), set(val_t.images.flatten().tolist())
    assert not rest_ids & val_ids and rest_ids | val_ids == set(range(len(whole)))


def test_class_balanced_index(digits):
    by_class = digits.train.indices_by_class()
    for c, idx in enumerate(by_class):
        assert (digits.train.labels[idx] == c).all()
    assert sum(len(i) for i in by_class) == len(digits.train)


def test_zca_round_trip_and_whitening(cifar10):
    x = cifar10.train.images[:3000]
    pre = Preprocess.fit(x, normalize=False, zca=True)
    z = pre(cifar10.test.images[:64])
    back = pre.inverse(z)
    torch.testing.assert_close(back, cifar10.test.images[:64].float() / 255, atol=2e-4, rtol=0)
    # whitening: the covariance of whitened training data has eigenvalues s / (s + eps) < 1
    zt = pre(x).flatten(1).double()
    cov = torch.cov(zt.T)
    eig = torch.linalg.eigvalsh(cov)
    assert eig.max() < 1.0 + 1e-3 and eig.max() > 0.5


def test_preprocess_serialises_exactly(digits):
    pre = Preprocess.fit(digits.train.images, zca=True, zca_eps=0.05)
    rebuilt = Preprocess.from_config(pre.to_config(), pre.tensors())
    x = digits.test.images[:10]
    assert torch.equal(pre(x), rebuilt(x))
    assert rebuilt.zca is not None and rebuilt.zca.eps == 0.05
    plain = Preprocess.fit(digits.train.images)
    assert plain.tensors() == {} and plain.to_config()["zca"] is None
    torch.testing.assert_close(plain(digits.train.images).mean(), torch.tensor(0.0), atol=1e-4, rtol=0)


def test_statistics_stream_in_chunks_and_equal_the_whole_set_computation(digits, monkeypatch):
    """Mean, std and ZCA are fitted chunk by chunk (no float copy of the set); the result is the
    whole-set computation's."""
    from pdd_hub.data import transforms

    monkeypatch.setattr(transforms, "STATS_CHUNK", 100)  # 14 chunks, the last one short
    images = digits.train.images
    pre = Preprocess.fit(images, zca=True)
    x = images.double() / 255
    mean = x.mean(dim=(0, 2, 3))
    std = torch.stack([x[:, c].std() for c in range(x.shape[1])])
    torch.testing.assert_close(pre.mean, mean.float())
    torch.testing.assert_close(pre.std, std.float())
    flat = ((x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)).flatten(1)
    eigvals, eigvecs = torch.linalg.eigh(torch.cov(flat.T))
    whiten = (eigvecs * (eigvals.clamp_min(0) + pre.zca.eps).rsqrt()) @ eigvecs.T
    torch.testing.assert_close(pre.zca.mean, flat.mean(0).float())
    torch.testing.assert_close(pre.zca.whiten, whiten.float(), atol=1e-4, rtol=1e-4)
    chunked = ZCAWhitening.fit(flat.float().view_as(images), chunk=64)
    torch.testing.assert_close(chunked.whiten, pre.zca.whiten, atol=1e-4, rtol=1e-4)


def test_zca_needs_two_images():
    with pytest.raises(ValueError, match="two images"):
        ZCAWhitening.fit(torch.randn(1, 1, 2, 2))


# --- bad input --------------------------------------------------------------------------------
def test_dataset_without_image_column(tmp_path):
    import datasets

    (tmp_path / "ds" / "data").mkdir(parents=True)
    for split in ("train", "test"):
        datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).to_parquet(
            str(tmp_path / "ds" / "data" / f"{split}-00000-of-00001.parquet")
        )
    with pytest.raises(DatasetFormatError, match=r"no image column.*\['text', 'label'\]"):
        load_real_data(str(tmp_path / "ds"))


def test_dataset_without_label_column(tmp_path):
    folder = write_image_folder(tmp_path / "ds", label_column="target_class")
    import datasets

    # a plain int column with an unknown name and no ClassLabel type is not guessed
    for split in ("train", "test"):
        path = folder / "data" / f"{split}-00000-of-00001.parquet"
        ds = datasets.Dataset.from_parquet(str(path))
        ds = ds.cast_column("target_class", datasets.Value("int64"))
        ds.to_parquet(str(path))
    with pytest.raises(DatasetFormatError, match="no label column"):
        load_real_data(str(folder))
    with pytest.raises(DatasetFormatError, match="no label column 'nope'"):
        load_real_data(str(folder), label_column="nope")


def test_undecodable_image_names_the_row(tmp_path):
    folder = write_image_folder(tmp_path / "ds", corrupt_row=4)
    with pytest.raises(DatasetFormatError, match="row 4: cannot decode"):
        load_real_data(str(folder), val_per_class=1)


def test_labels_outside_the_class_range_name_the_row(tmp_path):
    # -1 is how many Hub datasets mark missing labels
    folder = write_image_folder(tmp_path / "ds", label_override={5: -1})
    with pytest.raises(DatasetFormatError, match=r"row 5: label -1 .* outside the class range 0\.\.2"):
        load_real_data(str(folder), val_per_class=1)


def test_ipc_larger_than_a_class(digits):
    with pytest.raises(DatasetFormatError, match="cannot take 1000 images per class: class 0"):
        random_stage_indices(digits.train, num_stages=5, ipc=200, seed=0)
    with pytest.raises(DatasetFormatError, match="cannot take 500 images per class"):
        digits.train.sample_per_class(500, torch.Generator())


def test_validation_larger_than_a_class(tmp_path):
    folder = write_image_folder(tmp_path / "ds", per_class=4)
    with pytest.raises(DatasetFormatError, match="lower val_per_class"):
        load_real_data(str(folder), val_per_class=4)


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetFormatError, match="could not load dataset"):
        load_real_data(str(tmp_path / "nowhere" / "ds"))


def test_same_named_local_datasets_are_not_confused(tmp_path):

    for root, seed in (("a", 0), ("b", 1)):
        write_image_folder(tmp_path / root / "ds", seed=seed)
        (tmp_path / root / "ds" / "README.md").write_text(
            "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n"
            "  - split: test\n    path: data/test-*\n---\n"
        )
    a = load_real_data(str(tmp_path / "a" / "ds"), val_per_class=1)
    b = load_real_data(str(tmp_path / "b" / "ds"), val_per_class=1)
    assert not torch.equal(a.test.images, b.test.images)


def test_preprocessed_images_keep_uint8_and_give_what_the_preprocessing_gives(digits):
    from pdd_hub.data import Preprocess, PreprocessedImages

    pre = Preprocess.fit(digits.train.images, zca=True)
    lazy = PreprocessedImages(digits.train.images, pre)
    assert (
        lazy.raw.dtype == torch.uint8
        and len(lazy) == len(digits.train)
        and lazy.shape == digits.train.images.shape
    )
    idx = torch.tensor([5, 0, 17, 5])
    assert torch.equal(lazy[idx], pre(digits.train.images[idx]))
    assert torch.equal(lazy[3:9], pre(digits.train.images[3:9]))
    with pytest.raises(ValueError, match="uint8"):
        PreprocessedImages(digits.train.images.float(), pre)


def test_keep_train_per_class_is_one_seeded_subset_for_every_command(tmp_path, monkeypatch):
    """A run's ``train_per_class`` and ``pdd-hub select --train-per-class`` keep the same images."""
    monkeypatch.setenv("PDD_HUB_CACHE", str(tmp_path / "cache"))
    first, again, other = (load_real_data("sklearn:digits", val_per_class=1) for _ in range(3))
    first.keep_train_per_class(5, seed=0)
    again.keep_train_per_class(5, seed=0)
    other.keep_train_per_class(5, seed=1)
    assert torch.bincount(first.train.labels).tolist() == [5] * 10
    assert torch.equal(first.train.images, again.train.images)
    assert torch.equal(first.train.labels, again.train.labels)
    assert not torch.equal(first.train.images, other.train.images)
