"""The MTCNN vendored from facenet-pytorch 2.6.0 (emosent.data.mtcnn): facenet-pytorch's own boxes on a
real face, frames without a face, batches, and the shipped weights' checksum.
bench/mtcnn_vendored.py compares the two detectors on all the shared real clips and photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from emosent.data.mtcnn import WEIGHTS_FILE, MTCNN

# facenet-pytorch 2.6.0's MTCNN(keep_all=True, min_face_size=40).detect(frame, landmarks=True) on the
# frame below, printed once with that package installed (bench/mtcnn_vendored.py's Reference)
FACENET_BOX = [124.65279388427734, 29.35954475402832, 165.40866088867188, 80.29467010498047]
FACENET_PROB = 0.9999557733535767
FACENET_LANDMARKS = [[135.92173767089844, 47.3292236328125], [156.01406860351562, 48.42628479003906],
                     [145.53492736816406, 60.35029602050781], [135.1479034423828, 65.39064025878906],
                     [155.09878540039062, 66.26185607910156]]


@pytest.fixture(scope="module")
def astronaut_frame() -> torch.Tensor:
    """(240, 320, 3) float: scikit-image's astronaut (a real face, public domain) in a wider grey frame."""
    from skimage.data import astronaut

    frame = np.full((240, 320, 3), 40, np.uint8)
    frame[:, 40:280] = np.asarray(Image.fromarray(astronaut()).resize((240, 240)))
    return torch.from_numpy(frame).float()


def test_a_real_face_gets_facenet_pytorchs_box_and_landmarks(astronaut_frame):
    (found,) = MTCNN(40).detect(astronaut_frame[None])
    assert found.boxes.shape == (1, 4) and found.probs.shape == (1,) and found.landmarks.shape == (1, 5, 2)
    np.testing.assert_allclose(found.boxes[0], FACENET_BOX, atol=1e-3)
    np.testing.assert_allclose(found.probs[0], FACENET_PROB, atol=1e-6)
    np.testing.assert_allclose(found.landmarks[0], FACENET_LANDMARKS, atol=1e-3)


def test_a_batch_finds_each_frames_faces_as_alone(astronaut_frame):
    blank = torch.full_like(astronaut_frame, 40.0)
    mirrored = astronaut_frame.flip(1).contiguous()
    detector = MTCNN(40)
    batch = detector.detect(torch.stack([astronaut_frame, blank, mirrored]))
    assert [len(f.boxes) for f in batch] == [1, 0, 1]
    alone = detector.detect(mirrored[None])[0]
    np.testing.assert_allclose(batch[2].boxes, alone.boxes, atol=1e-3)
    # the mirrored face sits mirrored: its box's centre moves to the other side of the frame's centre
    assert abs((batch[2].boxes[0, 0] + batch[2].boxes[0, 2]) / 2 - (320 - (FACENET_BOX[0] + FACENET_BOX[2]) / 2)) < 3


def test_weights_that_differ_from_the_shipped_ones_are_refused(tmp_path):
    bad = tmp_path / "mtcnn.safetensors"
    data = bytearray(WEIGHTS_FILE.read_bytes())
    data[-1] ^= 1
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="mtcnn.safetensors: sha256 .* reinstall emosent"):
        MTCNN(40, path=bad)


def test_frames_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        MTCNN(40).detect(torch.zeros(3, 240, 320))
