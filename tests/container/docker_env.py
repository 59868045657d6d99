"""What the container tests share: the image they run, and why they would skip."""
import os
import shutil
import subprocess

IMAGE = os.environ.get("XFER_TEST_IMAGE", "xfer:test")


def docker_ready() -> str:
    """Empty when Docker answers and the image is built; else why not."""
    if not shutil.which("docker"):
        return "no docker client"
    if subprocess.run(["docker", "info"], capture_output=True).returncode:
        return "no Docker daemon answers"
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        return f"image {IMAGE} not built (tests/container/setup.sh builds it)"
    return ""
