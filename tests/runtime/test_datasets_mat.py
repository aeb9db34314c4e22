"""Pittsburgh 30k/250k and Tokyo 24/7 from .mat files written here in the official dbStruct layout."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import recall_at_n
from runtime.datasets import keep_first_per_panorama, load_pittsburgh, load_tokyo247, open_dataset
from runtime.datasets.matlab import panorama_ids
from runtime.errors import DatasetError

sio = pytest.importorskip("scipy.io", reason="needs scipy (pip install 'netvlad-kit[train]')")


def cell(strings):
    out = np.empty((len(strings), 1), dtype=object)  # MATLAB cell column, as in the official files
    for i, s in enumerate(strings):
        out[i, 0] = s
    return out


def write_dbstruct(path, db_images, utm_db, q_images, utm_q, which="test", extra=None, drop=()):
    fields = {
        "whichSet": which,
        "dbImage": cell(db_images),
        "utmDb": np.asarray(utm_db, dtype=np.float64).T,  # 2 x N, as MATLAB stores it
        "qImage": cell(q_images),
        "utmQ": np.asarray(utm_q, dtype=np.float64).T,
        "numImages": float(len(db_images)),
        "numQueries": float(len(q_images)),
        "posDistThr": 25.0,
        "posDistSqThr": 625.0,
        "nonTrivPosDistSqThr": 100.0,
        **(extra or {}),
    }
    for name in drop:
        fields.pop(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.savemat(str(path), {"dbStruct": fields})
    return path


def test_pittsburgh_dbstruct(tmp_path):
    db = [f"000/000{i:03d}_pitch1_yaw{j}.jpg" for i in range(3) for j in (1, 2)]
    utm_db = [[584000.0 + 10 * i, 4477000.0] for i in range(3) for _ in (1, 2)]
    q = ["000/000000_pitch1_yaw1.jpg", "001/001000_pitch2_yaw3.jpg"]
    utm_q = [[584003.0, 4477004.0], [590000.0, 4477000.0]]
    mat = write_dbstruct(tmp_path / "datasets" / "pitts30k_test.mat", db, utm_db, q, utm_q)
    ds = open_dataset(mat)
    assert ds.info["source"] == "pittsburgh" and ds.info["which_set"] == "test"
    assert ds.info["pos_dist_thr"] == 25.0 and ds.info["non_triv_pos_dist_sq_thr"] == 100.0
    assert ds.root == tmp_path and ds.name == "pitts30k_test"
    assert ds.db_images == tuple(db) and ds.q_images == tuple("queries_real/" + n for n in q)
    assert ds.db_utm.shape == (6, 2) and ds.db_utm[2].tolist() == [584010.0, 4477000.0]
    assert ds.positives(10.0)[0].tolist() == [0, 1, 2, 3]  # 5 m, 5 m, then 8.1 m, 8.1 m
    assert ds.without_unmatched_queries().num_queries == 1
    assert (
        load_pittsburgh(mat, images_root=tmp_path / "imgs").image_path("database", 0)
        == tmp_path / "imgs" / db[0]
    )


def test_tokyo247_cutouts_and_panorama_nms(tmp_path):
    db = [f"03814/{p:05d}_{yaw:03d}.jpg" for p in range(3) for yaw in range(0, 360, 30)]
    utm_db = [[386000.0 + 40 * p, 3949000.0] for p in range(3) for _ in range(12)]
    mat = write_dbstruct(
        tmp_path / "tokyo247.mat", db, utm_db, ["q0.jpg"], [[386001.0, 3949000.0]],
        extra={"dbTimeStamp": np.arange(36.0), "qTimeStamp": np.array([5.0])},
    )  # fmt: skip
    ds = load_tokyo247(mat, queries_subdir="")
    assert ds.q_images == ("q0.jpg",)
    assert ds.info["source"] == "tokyo247" and ds.info["cutouts_per_panorama"] == 12
    assert ds.db_time[-1] == 35.0 and ds.q_time.tolist() == [5.0]
    assert panorama_ids(36)[[0, 11, 12, 35]].tolist() == [0, 0, 1, 2]
    ranked = np.array([[14, 13, 2, 30, 5, 25, 0, 7], [3, 4, 5, 6, 7, 8, 9, 10]])
    kept = keep_first_per_panorama(ranked, n=3)
    assert kept.tolist() == [[14, 2, 30], [3, -1, -1]]
    # recall on the suppressed list: query 0's only positive panorama is 0 (db 0..11)
    assert recall_at_n(kept[:1], [np.arange(12)], ns=(1, 2)) == {1: 0.0, 2: 1.0}
    write_dbstruct(tmp_path / "tokyo_bad.mat", db[:30], utm_db[:30], ["q0.jpg"], [[0.0, 0.0]])
    with pytest.raises(DatasetError, match=r"12 cut-outs per panorama, but the database has 30 images"):
        load_tokyo247(tmp_path / "tokyo_bad.mat")


def test_mat_files_of_another_structure(tmp_path):
    other = tmp_path / "other.mat"
    sio.savemat(str(other), {"foo": np.eye(2)})
    with pytest.raises(DatasetError) as info:
        open_dataset(other)
    assert str(info.value) == (
        f"'{other}' has no 'dbStruct' variable (found: foo); expected an official Pittsburgh 30k/250k or "
        "Tokyo 24/7 dbStruct file (e.g. pitts30k_test.mat)"
    )
    partial = write_dbstruct(
        tmp_path / "partial.mat", ["a.jpg"], [[0, 0]], ["b.jpg"], [[0, 0]], drop=("utmQ", "numQueries")
    )
    with pytest.raises(
        DatasetError, match=r"partial.mat': dbStruct lacks the fields utmQ, numQueries \(found: "
    ):
        open_dataset(partial)
    empty = write_dbstruct(tmp_path / "empty.mat", ["a.jpg"], [[0, 0]], [], np.zeros((0, 2)))
    with pytest.raises(DatasetError, match=r"empty.mat': the query split is empty"):
        open_dataset(empty)
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(DatasetError, match=r"junk.mat' is not a readable MATLAB .mat file"):
        open_dataset(tmp_path / "junk.mat")
    with pytest.raises(DatasetError, match=r"missing.mat' does not exist; give the path of an official"):
        open_dataset(tmp_path / "missing.mat")
