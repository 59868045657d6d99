"""The image's Keras cache is writable by the user the steps run as, so a run with
`weights: imagenet` in an image built without BAKE_WEIGHTS can download the weights
where Keras looks for them ($KERAS_HOME/models/).

Run by `make test-container` (needs Docker and the image; tests/container/setup.sh)."""
import json
import os
import subprocess

import pytest
from docker_env import IMAGE, docker_ready


pytestmark = [pytest.mark.container, pytest.mark.timeout(600)]

# As Keras' get_file does: resolve the cache from KERAS_HOME, create models/, write a
# file there, read it back; also say who ran it.
PROBE = """
import json, os
home = os.environ["KERAS_HOME"]
models = os.path.join(home, "models")
os.makedirs(models, exist_ok=True)
path = os.path.join(models, "xfer_probe_weights.h5")
with open(path, "wb") as f:
    f.write(b"weights" * 1000)
with open(path, "rb") as f:
    back = f.read()
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "keras_home": home, "path": path,
                  "bytes": len(back), "same": back == b"weights" * 1000}))
"""


@pytest.fixture(scope="module")
def image():
    reason = docker_ready()
    if reason:
        pytest.skip(reason)
    return IMAGE


def _run(image, *args):
    # No --user: the image's default user, as KFP and Vertex start the steps.
    return subprocess.run(["docker", "run", "--rm", image, *args], capture_output=True, text=True,
                          timeout=300)


def test_the_step_user_can_write_the_keras_cache(image):
    proc = _run(image, "python", "-c", PROBE)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["uid"] != 0, "the image runs its steps as root"
    assert seen["uid"] == 1000
    assert seen["keras_home"] == "/opt/keras"
    assert seen["path"] == "/opt/keras/models/xfer_probe_weights.h5"
    assert seen["bytes"] == 7000 and seen["same"]


def test_the_image_user_is_not_root(image):
    user = subprocess.run(["docker", "image", "inspect", "-f", "{{.Config.User}}", image],
                          capture_output=True, text=True).stdout.strip()
    assert user not in ("", "root", "0"), f"image USER is {user!r}"
    proc = _run(image, "id", "-u")
    assert proc.returncode == 0 and proc.stdout.strip() not in ("", "0"), proc.stdout + proc.stderr
