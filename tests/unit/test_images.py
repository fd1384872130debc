"""build and push of the service image and the test images, with the memory runtime."""

import pytest

from cdlib import config, images
from cdlib.errors import ConfigError
from cdlib.runtime.memory import MemoryRuntime


def spec(tmp_path, **over):
    data = {"service": "shop", "port": 80,
            "image": {"repository": "reg:5000/shop", "build": {"context": "app", "args": {"A": "1"}}},
            "tests": {"pre-deployment": {"image": {"repository": "reg:5000/shop-tests",
                                                   "build": {"context": ".", "dockerfile": "tests/Dockerfile"}}},
                      "pre-integration": {"image": {"repository": "reg:5000/shop-tests"}},
                      "post-integration": {"command": "true"}}}
    data.update(over)
    return config.parse(data, str(tmp_path / "cdlib.yml"), tmp_path, env={}).with_tag("abc123")


def test_build_tags_service_and_test_images_with_the_release_tag(tmp_path):
    rt = MemoryRuntime()
    out = images.build(spec(tmp_path), rt)
    assert out.ok and [i["image"] for i in out.data["images"]] == ["reg:5000/shop:abc123", "reg:5000/shop-tests:abc123"]
    builds = [args for name, args in rt.calls if name == "build_image"]
    assert builds[0] == (str(tmp_path / "app"), "Dockerfile", ("reg:5000/shop:abc123",),
                         {"A": "1", "CDLIB_TAG": "abc123"})
    assert builds[1][1] == "tests/Dockerfile" and builds[1][3] == {"CDLIB_TAG": "abc123"}


def test_push_pushes_each_image_once(tmp_path):
    rt = MemoryRuntime()
    s = spec(tmp_path)
    images.build(s, rt)
    out = images.push(s, rt)
    assert [p["image"] for p in out.data["images"]] == ["reg:5000/shop:abc123", "reg:5000/shop-tests:abc123"]
    assert all(p["digest"].startswith("sha256:") for p in out.data["images"])


def test_build_without_a_build_context_is_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="image.build"):
        images.build(spec(tmp_path, image="reg:5000/shop"), MemoryRuntime())


def test_build_only_tests_or_only_service(tmp_path):
    rt = MemoryRuntime()
    s = spec(tmp_path)
    assert [i["image"] for i in images.build(s, rt, only="tests").data["images"]] == ["reg:5000/shop-tests:abc123"]
    assert [i["image"] for i in images.build(s, rt, only="service").data["images"]] == ["reg:5000/shop:abc123"]
    # test images can be built before (and without) a service build context
    assert images.build(spec(tmp_path, image="reg:5000/shop"), rt, only="tests").ok
