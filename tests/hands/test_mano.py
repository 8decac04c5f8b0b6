"""MANO loading (safe unpickling, file checks) and the smplx-backed ManoHandModel.

All MANO files here are synthetic (the ``mano_files`` fixture, tests/plugins/mano.py); no MANO data
is used.
"""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.spatial.transform import Rotation

from sesahand.hands.mano import MANO_FINGERTIP_VERTICES, ManoHandModel, find_mano_files
from sesahand.hands.safe_pickle import UnsafePickleError, load_mano_file, load_mano_pickle
from sesahand.hands.types import HandParams


@pytest.fixture(scope="module")
def right_data(mano_files):
    return mano_files.make_mano_data(seed=0)


def assert_same_arrays(loaded: dict, expected: dict, keys=None):
    for key in keys or expected:
        got, want = loaded[key], expected[key]
        if scipy.sparse.issparse(want):
            assert scipy.sparse.issparse(got), key
            got, want = got.toarray(), want.toarray()
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=key)


# --------------------------------------------------------------------------- safe loading


@pytest.mark.parametrize("protocol,legacy", [(2, True), (2, False), (4, False), (5, False)])
def test_plain_pickle_round_trip(tmp_path, right_data, protocol, legacy, mano_files):
    path = mano_files.write_plain_pickle(tmp_path / "MANO_RIGHT.pkl", right_data, protocol, legacy)
    loaded = load_mano_file(path)
    assert_same_arrays(loaded, right_data)


@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_chumpy_style_pickle(tmp_path, right_data, protocol, mano_files):
    path = mano_files.write_chumpy_pickle(tmp_path / "MANO_RIGHT.pkl", right_data, protocol)
    had_chumpy = "chumpy" in sys.modules
    loaded = load_mano_file(path)
    assert_same_arrays(loaded, right_data)  # shapedirs: the 10 components the Select picks
    np.testing.assert_allclose(loaded["J"], right_data["J_regressor"] @ right_data["v_template"])
    assert "bs_style" not in loaded and "bs_type" not in loaded  # strings are not arrays
    assert ("chumpy" in sys.modules) == had_chumpy


def test_npz(tmp_path, right_data, mano_files):
    loaded = load_mano_file(mano_files.write_npz(tmp_path / "MANO_RIGHT.npz", right_data))
    assert_same_arrays(loaded, {**right_data, "J_regressor": right_data["J_regressor"].toarray()})


def test_malicious_pickle_refused_without_running(tmp_path, right_data, mano_files):
    marker = tmp_path / "pwned"
    path = mano_files.write_malicious_pickle(tmp_path / "MANO_RIGHT.pkl", right_data, marker)
    with pytest.raises(UnsafePickleError) as info:
        load_mano_pickle(path)
    assert not marker.exists()
    message = str(info.value)
    assert str(path) in message and "system" in message and "mano.is.tue.mpg.de" in message
    with pytest.raises(UnsafePickleError):
        load_mano_file(path)
    assert not marker.exists()


def test_malicious_fixture_is_live(tmp_path, right_data, mano_files):
    """Control: plain pickle really runs the payload, so the refusal above means something."""
    marker = tmp_path / "pwned"
    path = mano_files.write_malicious_pickle(tmp_path / "x.pkl", right_data, marker)
    pickle.loads(path.read_bytes())
    assert marker.exists()


def _call_global(module: str, name: str, arg: str) -> bytes:
    """Protocol-0 pickle calling module.name(arg)."""
    return b"c%s\n%s\n(V%s\ntR." % (module.encode(), name.encode(), arg.encode())


@pytest.mark.parametrize("module,name", [
    ("builtins", "eval"), ("__builtin__", "getattr"), ("subprocess", "Popen"),
    ("numpy", "load"), ("numpy.testing._private.utils", "runstring"),
    ("chumpy.ch_ops", "add"), ("scipy.sparse._csr", "csr_matrix"), ("copyreg", "__newobj__"),
])
def test_other_globals_refused(tmp_path, module, name):
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(_call_global(module, name, "1"))
    with pytest.raises(UnsafePickleError, match=f"{module}.{name}"):
        load_mano_pickle(path)


@pytest.mark.parametrize("blob", [
    b"ccopy_reg\n_reconstructor\n(c__builtin__\nset\nc__builtin__\nobject\nNtR.",
    b"c_codecs\nencode\n(Vabc\nVrot13\ntR.",
    b"c_codecs\nencode\n}(Vx\nI1\nub.",  # BUILD: set attributes on an allowed function
    b"cnumpy._core.numeric\n_frombuffer\n}(Vx\nI1\nub.",
])
def test_allowed_helpers_reject_other_uses(tmp_path, blob):
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(blob)
    with pytest.raises(UnsafePickleError, match=str(path)):
        load_mano_pickle(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "not_dict"])
def test_corrupt_pickle(tmp_path, right_data, damage, mano_files):
    path = mano_files.write_plain_pickle(tmp_path / "MANO_RIGHT.pkl", right_data)
    blob = path.read_bytes()
    path.write_bytes({"truncate": blob[: len(blob) // 2], "garbage": bytes(range(256)) * 4,
                      "empty": b"", "not_dict": pickle.dumps([1, 2], protocol=2)}[damage])
    with pytest.raises(ValueError, match="mano.is.tue.mpg.de") as info:
        load_mano_file(path)
    assert str(path) in str(info.value)


def test_corrupt_npz(tmp_path, right_data, mano_files):
    path = mano_files.write_npz(tmp_path / "MANO_RIGHT.npz", right_data)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="MANO_RIGHT.npz"):
        load_mano_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="MANO_RIGHT.pkl"):
        load_mano_file(tmp_path / "MANO_RIGHT.pkl")


@pytest.mark.parametrize("key", ["weights", "hands_components", "f"])
def test_missing_key(tmp_path, right_data, key, mano_files):
    data = {k: v for k, v in right_data.items() if k != key}
    path = mano_files.write_plain_pickle(tmp_path / "MANO_RIGHT.pkl", data)
    with pytest.raises(ValueError, match=f"missing '{key}'") as info:
        load_mano_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("key,value", [
    ("posedirs", np.zeros((778, 3, 100))),
    ("v_template", np.zeros((700, 3))),
    ("kintree_table", np.zeros((2, 16), dtype=np.int64)),
    ("f", np.full((1538, 3), 900, dtype=np.int64)),
    ("hands_mean", np.full(45, np.nan)),
])
def test_malformed_key(tmp_path, right_data, key, value, mano_files):
    path = mano_files.write_npz(tmp_path / "MANO_LEFT.npz", {**right_data, key: value})
    with pytest.raises(ValueError, match=f"'{key}'"):
        load_mano_file(path)


# --------------------------------------------------------------------------- the model

@pytest.fixture(scope="module")
def smplx():
    return pytest.importorskip("smplx")


@pytest.fixture(scope="module")
def mano_dir(tmp_path_factory, right_data, mano_files):
    folder = tmp_path_factory.mktemp("mano")
    mano_files.write_plain_pickle(folder / "MANO_RIGHT.pkl", right_data)
    mano_files.write_chumpy_pickle(folder / "MANO_LEFT.pkl", mano_files.make_left_data(right_data, shapedirs_bug=True))
    return folder


@pytest.fixture(scope="module")
def model(smplx, mano_dir):
    return ManoHandModel(mano_dir)


def signed_volume(vertices: torch.Tensor, faces: torch.Tensor) -> float:
    v = vertices.double() - vertices.double().mean(0)
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    return float((a * torch.linalg.cross(b, c)).sum() / 6)


def rest_joints(data: dict) -> np.ndarray:
    return data["J_regressor"] @ data["v_template"]


def test_find_mano_files(tmp_path, right_data, mano_files):
    mano_files.write_npz(tmp_path / "MANO_RIGHT.npz", right_data)
    mano_files.write_plain_pickle(tmp_path / "MANO_RIGHT.pkl", right_data)
    mano_files.write_npz(tmp_path / "MANO_LEFT.npz", right_data)
    assert find_mano_files(tmp_path) == {"right": tmp_path / "MANO_RIGHT.pkl",
                                         "left": tmp_path / "MANO_LEFT.npz"}
    with pytest.raises(FileNotFoundError):
        find_mano_files(tmp_path / "nowhere")


def test_no_files_in_folder(smplx, tmp_path):
    with pytest.raises(FileNotFoundError, match="MANO_RIGHT.pkl"):
        ManoHandModel(tmp_path)


def test_forward_shapes_and_order(model):
    params = [HandParams.create("left"), HandParams.create("right"), HandParams.create("left")]
    meshes = model.forward(params)
    assert [m.side for m in meshes] == ["left", "right", "left"]
    for m, p in zip(meshes, params):
        assert m.vertices.shape == (778, 3) and m.vertices.dtype == torch.float32
        assert m.joints.shape == (21, 3) and m.joints.dtype == torch.float32
        assert m.faces.shape == (1538, 3) and m.faces.dtype == torch.int64
        assert m.model == "mano" and m.params is p
    assert model.forward([]) == []


def test_global_orient_rotates_about_wrist_then_transl(model, right_data):
    rotvec = np.array([0.3, -1.1, 0.7])
    transl = np.array([0.02, -0.05, 0.6])
    mesh = model.forward([HandParams.create("right", global_orient=rotvec, transl=transl)])[0]
    R = Rotation.from_rotvec(rotvec).as_matrix()
    J = rest_joints(right_data)
    expected_vertices = (right_data["v_template"] - J[0]) @ R.T + J[0] + transl
    np.testing.assert_allclose(mesh.vertices.numpy(), expected_vertices, atol=1e-5)
    np.testing.assert_allclose(mesh.joints[0].numpy(), J[0] + transl, atol=1e-5)


def test_joints_are_mano_joints_and_tip_vertices_in_openpose_order(model, right_data):
    transl = np.array([0.1, 0.2, 0.3])
    pose = torch.randn(45, generator=torch.Generator().manual_seed(0)) * 0.4
    p = HandParams.create("right", hand_pose=pose, transl=transl)
    mesh = model.forward([p])[0]
    tips = mesh.vertices[list(MANO_FINGERTIP_VERTICES)]
    torch.testing.assert_close(mesh.joints[[4, 8, 12, 16, 20]], tips)
    flat = model.forward([HandParams.create("right", transl=transl)])[0]
    J = rest_joints(right_data) + transl
    mano_rows = [0, 13, 14, 15, 1, 2, 3, 4, 5, 6, 10, 11, 12, 7, 8, 9]
    openpose_rows = [0, 1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19]
    np.testing.assert_allclose(flat.joints[openpose_rows].numpy(), J[mano_rows], atol=1e-5)


@pytest.mark.parametrize("bug", [True, False])
def test_left_shapedirs_fix_makes_left_the_mirror_of_right(smplx, tmp_path, right_data, bug, mano_files):
    mano_files.write_plain_pickle(tmp_path / "MANO_RIGHT.pkl", right_data)
    mano_files.write_plain_pickle(tmp_path / "MANO_LEFT.pkl", mano_files.make_left_data(right_data, shapedirs_bug=bug))
    m = ManoHandModel(tmp_path)
    betas = torch.linspace(-2.0, 2.0, 10)
    right, left = m.forward([HandParams.create("right", betas=betas),
                             HandParams.create("left", betas=betas)])
    mirror = torch.tensor([-1.0, 1.0, 1.0])
    torch.testing.assert_close(left.vertices, right.vertices * mirror, atol=1e-6, rtol=0)
    torch.testing.assert_close(left.joints, right.joints * mirror, atol=1e-6, rtol=0)


def test_left_only_warns_and_right_side_missing(smplx, tmp_path, right_data, caplog, mano_files):
    path = mano_files.write_plain_pickle(tmp_path / "MANO_LEFT.pkl", mano_files.make_left_data(right_data))
    with caplog.at_level(logging.WARNING, logger="sesahand.hands.mano"):
        m = ManoHandModel({"left": path})
    assert "MANO_RIGHT" in caplog.text
    assert m.forward([HandParams.create("left")])[0].vertices.shape == (778, 3)
    with pytest.raises(FileNotFoundError, match="MANO_RIGHT.pkl"):
        m.forward([HandParams.create("right")])
    with pytest.raises(FileNotFoundError, match="MANO_RIGHT.pkl"):
        m.faces("right")


@pytest.mark.parametrize("flip_left_faces", [False, True])
def test_faces_wind_outward_on_both_sides(smplx, tmp_path, right_data, flip_left_faces, mano_files):
    mano_files.write_plain_pickle(tmp_path / "MANO_RIGHT.pkl", right_data)
    mano_files.write_npz(tmp_path / "MANO_LEFT.npz", mano_files.make_left_data(right_data, flip_faces=flip_left_faces))
    m = ManoHandModel(tmp_path)
    for side in ("right", "left"):
        mesh = m.forward([HandParams.create(side)])[0]
        assert signed_volume(mesh.vertices, m.faces(side)) > 0, side


def test_chumpy_and_plain_files_give_the_same_hand(tmp_path, right_data, model, mano_files):
    path = mano_files.write_chumpy_pickle(tmp_path / "MANO_RIGHT.pkl", right_data)
    p = HandParams.create("right", betas=torch.ones(10), hand_pose=torch.full((45,), 0.1))
    torch.testing.assert_close(ManoHandModel(path).forward([p])[0].vertices,
                               model.forward([p])[0].vertices)


def test_pca_round_trip(model, right_data):
    coeffs = torch.randn(10, generator=torch.Generator().manual_seed(3))
    pose = model.pca_to_hand_pose(coeffs, "right")
    assert pose.shape == (45,) and pose.dtype == torch.float32
    back = (pose.double().numpy() - right_data["hands_mean"]) @ right_data["hands_components"].T
    np.testing.assert_allclose(back[:10], coeffs.numpy(), atol=1e-5)
    np.testing.assert_allclose(back[10:], 0.0, atol=1e-5)


def test_pca_pose_matches_smplx_pca_mode(smplx, model, right_data):
    """smplx's own PCA path (use_pca, hands_mean added) poses the same hand."""

    coeffs = torch.randn(12, generator=torch.Generator().manual_seed(4))
    orient = torch.tensor([0.2, 0.4, -0.3])
    ref = smplx.MANO("unused", data_struct=smplx.utils.Struct(**right_data), use_pca=True,
                     num_pca_comps=12, flat_hand_mean=False)
    with torch.no_grad():
        expected = ref(hand_pose=coeffs[None], global_orient=orient[None],
                       betas=torch.zeros(1, 10)).vertices[0]
    p = HandParams.create("right", global_orient=orient,
                          hand_pose=model.pca_to_hand_pose(coeffs, "right"))
    torch.testing.assert_close(model.forward([p])[0].vertices, expected, atol=1e-6, rtol=1e-5)


def test_sample_hand_pose_prior(model, right_data):
    poses = [model.sample_hand_pose(torch.Generator().manual_seed(s), "right", n_components=8)
             for s in range(20)]
    again = model.sample_hand_pose(torch.Generator().manual_seed(0), "right", n_components=8)
    torch.testing.assert_close(again, poses[0])
    assert not torch.equal(poses[0], poses[1])
    low, high = right_data["hands_coeffs"].min(0)[:8], right_data["hands_coeffs"].max(0)[:8]
    for pose in poses:
        coeffs = ((pose.double().numpy() - right_data["hands_mean"])
                  @ right_data["hands_components"].T)
        assert np.all(coeffs[:8] >= low - 1e-5) and np.all(coeffs[:8] <= high + 1e-5)
        np.testing.assert_allclose(coeffs[8:], 0.0, atol=1e-5)
    zero = model.sample_hand_pose(torch.Generator().manual_seed(0), "left", scale=0.0)
    np.testing.assert_allclose(zero.numpy(), right_data["hands_mean"], atol=1e-6)


def test_sample_hand_pose_without_training_coeffs(smplx, tmp_path, right_data, caplog, mano_files):
    data = {k: v for k, v in right_data.items() if k != "hands_coeffs"}
    with caplog.at_level(logging.WARNING, logger="sesahand.hands.mano"):
        m = ManoHandModel(mano_files.write_npz(tmp_path / "MANO_RIGHT.npz", data))
    assert "hands_coeffs" in caplog.text
    pose = m.sample_hand_pose(torch.Generator().manual_seed(0), "right", n_components=45)
    coeffs = (pose.double().numpy() - data["hands_mean"]) @ data["hands_components"].T
    assert np.all(np.abs(coeffs) <= 3.0 + 1e-5) and np.abs(coeffs).max() > 0.5


@pytest.mark.parametrize("kwargs", [{"n_components": 0}, {"n_components": 46},
                                    {"scale": -1.0}, {"scale": float("nan")}])
def test_sample_hand_pose_bad_args(model, kwargs):
    with pytest.raises(ValueError):
        model.sample_hand_pose(torch.Generator(), "right", **kwargs)


def test_pca_to_hand_pose_bad_args(model):
    with pytest.raises(ValueError, match="coeffs"):
        model.pca_to_hand_pose(torch.zeros(46), "right")
    with pytest.raises(ValueError, match="side"):
        model.pca_to_hand_pose(torch.zeros(3), "middle")


def test_sesahand_import_does_not_import_smplx():
    code = ("import sys, sesahand.hands.mano, sesahand.hands.safe_pickle; "
            "assert 'smplx' not in sys.modules, 'smplx imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_freihand_vectors_are_relative_to_the_mean_pose(model):
    from sesahand.hands import PoseSpec
    from sesahand.camera import Camera

    v = torch.linspace(-0.3, 0.3, 61)
    K = [[400.0, 0.0, 112.0], [0.0, 400.0, 112.0], [0.0, 0.0, 1.0]]
    scene, = PoseSpec.from_freihand([[v.tolist()]], [K]).resolve(model, Camera.default(224, 224))
    hand = scene.hands[0]
    assert torch.allclose(hand.hand_pose, v[3:48] + model.hands_mean("right"))
    assert torch.equal(hand.global_orient, v[:3]) and torch.equal(hand.betas, v[48:58])
    assert torch.equal(hand.transl, v[58:61]) and scene.camera.width == 224


def test_random_poses_use_the_mano_prior(model, monkeypatch):
    from sesahand.hands import PoseSpec
    from sesahand.camera import Camera

    marker = torch.full((45,), 0.05)
    calls = []

    def prior(generator, side):
        calls.append(side)
        return marker

    monkeypatch.setattr(model, "sample_hand_pose", prior)
    scene = PoseSpec.random(11, num_hands=2).resolve(model, Camera.default(256, 256), 1)[0]
    assert calls == ["right", "left"]
    assert all(torch.equal(h.hand_pose, marker) for h in scene.hands)
