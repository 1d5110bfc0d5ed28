"""The browser app through its HTTP interface (a real uvicorn server, `app_server`):
generate, edit, decompose, open, download; every bad input answered with a message
while the server keeps serving; a cancelled job; two clients queued one at a time.

The built-in model, 2 steps, scenes of 2 foregrounds: few compilations, shared by the
whole session (`conftest.app_server`)."""

from __future__ import annotations

import io
import threading
import zipfile

import httpx
import numpy as np
import pytest
from app_server import MAX_UPLOAD_MB, wait_job
from PIL import Image

SCENE = {"background": {"prompt": "a striped blue wall"},
         "layers": [{"prompt": "a small red star", "box": [0.1, 0.45, 0.5, 0.9]},
                    {"prompt": "a large green ring", "box": [0.45, 0.15, 0.95, 0.7]}]}
STEPS = 2


@pytest.fixture(scope="module")
def client(app_server):
    with httpx.Client(base_url=app_server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def generated(client):
    """One generated result: (job, result description)."""
    r = client.post("/api/generate", json={"scene": SCENE, "steps": STEPS, "seed": 3})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["status"] == "done", job
    return job, client.get(f"/api/results/{job['result']}").json()


def error_of(response: httpx.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert message.startswith("error: ")
    return message


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_page_and_static_files_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/js/main.js" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing fetched from elsewhere
    assert client.get("/static/js/main.js").status_code == 200
    info = client.get("/api/info").json()
    assert info["model"] == "builtin" and info["variant"] == "box"
    assert info["max_foregrounds"] >= 2 and "ddim" in info["schedulers"]


def test_generate_and_download(client, generated):
    job, result = generated
    assert job["done"] == job["total"] == STEPS
    scene = result["scene"]
    assert [l["prompt"] for l in scene["layers"]] == ["a small red star", "a large green ring"]
    assert scene["steps"] == STEPS and scene["seed"] == 3
    for name in ("layers.psd", "layers.ora", "scene.json", "background.png", "layer_01.png",
                 "layer_02.png", "composite.png"):
        assert name in result["files"]
    base = result["base"]
    layer = Image.open(io.BytesIO(client.get(base + "layer_01.png").content))
    assert layer.mode == "RGBA"

    from psd_tools import PSDImage

    psd = client.get(base + "layers.psd", params={"download": 1})
    assert "attachment" in psd.headers["content-disposition"]
    opened = PSDImage.open(io.BytesIO(psd.content))
    names = [l.name for l in opened.descendants()]
    assert any("a small red star" in n for n in names), names
    assert zipfile.ZipFile(io.BytesIO(client.get(base + "layers.ora").content)).read("stack.xml")
    bundle = zipfile.ZipFile(io.BytesIO(client.get(f"/api/results/{result['id']}/zip").content))
    assert any(n.endswith("/layers.psd") for n in bundle.namelist())


def test_edit_moves_and_reorders_keeping_the_other_layer(client, generated):
    _, result = generated
    ops = [{"op": "move", "index": 1, "dx": 0.125, "dy": -0.125}, {"op": "order", "order": [2, 1]}]
    r = client.post("/api/edit", json={"result": result["id"], "ops": ops})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["status"] == "done", job
    edited = client.get(f"/api/results/{job['result']}").json()
    assert edited["scene"]["mode"] == "edit" and edited["scene"]["edited_from"] == result["id"]
    assert [l["prompt"] for l in edited["scene"]["layers"]] == ["a large green ring",
                                                                "a small red star"]
    assert edited["scene"]["layers"][1]["box"] == pytest.approx([0.225, 0.325, 0.625, 0.775])
    old = client.get(result["base"] + "layer_02.png").content
    new = client.get(edited["base"] + "layer_01.png").content  # the untouched layer
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(old))),
                          np.asarray(Image.open(io.BytesIO(new))))


def test_decompose_an_uploaded_picture(client, generated):
    _, result = generated
    picture = client.get(result["base"] + "composite.png").content
    up = client.post("/api/uploads", files={"file": ("mine.png", picture, "image/png")})
    assert up.status_code == 200, up.text
    upload = up.json()
    assert client.get(upload["url"]).headers["content-type"] == "image/png"
    r = client.post("/api/decompose", json={"upload": upload["id"], "scene": SCENE,
                                            "steps": STEPS})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["status"] == "done", job
    decomposed = client.get(f"/api/results/{job['result']}").json()
    assert decomposed["scene"]["mode"] == "decompose"
    assert "layers.psd" in decomposed["files"]


def test_open_a_scene_and_a_result_zip(client, generated):
    _, result = generated
    scene_json = client.get(result["base"] + "scene.json").content
    r = client.post("/api/open", files=[("files", ("scene.json", scene_json, "application/json"))])
    assert r.status_code == 200, r.text
    assert r.json()["scene"]["layers"][0]["prompt"] == "a small red star"
    assert "result" not in r.json()
    bundle = client.get(f"/api/results/{result['id']}/zip").content
    r = client.post("/api/open", files=[("files", ("run.zip", bundle, "application/zip"))])
    assert r.status_code == 200, r.text
    opened = client.get(f"/api/results/{r.json()['result']}").json()
    assert opened["id"] != result["id"] and "latents.safetensors" in opened["files"]
    same = [client.get(d["base"] + "layer_02.png").content for d in (result, opened)]
    assert np.array_equal(*(np.asarray(Image.open(io.BytesIO(b))) for b in same))


def test_bad_input_gets_a_message_and_the_server_keeps_serving(client, generated):
    _, result = generated
    rid = result["id"]

    def gen(scene=None, **settings):
        return client.post("/api/generate", json={"scene": scene or SCENE, **settings})

    empty_bg = {**SCENE, "background": {"prompt": "  "}}
    assert "background must be a non-empty string" in error_of(gen(empty_bg))
    empty_layer = {**SCENE, "layers": [{"prompt": "", "box": [0.1, 0.1, 0.5, 0.5]}]}
    assert "layer 1 prompt" in error_of(gen(empty_layer))
    outside = {**SCENE, "layers": [{"prompt": "a red star", "box": [0.5, 0.5, 1.3, 0.9]}]}
    assert "must lie in [0, 1]" in error_of(gen(outside))
    no_box = {**SCENE, "layers": [{"prompt": "a red star"}]}
    assert "has no box" in error_of(gen(no_box))
    assert "at most" in error_of(gen({**SCENE, "layers": SCENE["layers"] * 3}))
    assert "steps" in error_of(gen(steps=0))
    assert "unknown scheduler" in error_of(gen(scheduler="pndm-ish"))
    assert "guidance" in error_of(gen(guidance="lots"))
    assert "not valid JSON" in error_of(client.post("/api/generate", content=b"{oops"))

    def upload(data: bytes, name: str = "x.png"):
        return client.post("/api/uploads", files={"file": (name, data, "image/png")})

    assert "is not a picture" in error_of(upload(b"this is not a picture", "evil.png"))
    assert "is empty" in error_of(upload(b""))
    noise = np.random.default_rng(0).integers(0, 256, (800, 800, 3), np.uint8)
    big = png_bytes(noise)
    assert len(big) > MAX_UPLOAD_MB * 1e6
    assert "MB" in error_of(upload(big), 413)
    assert "no upload" in error_of(client.post("/api/decompose", json={
        "upload": "../../etc/passwd", "scene": SCENE}), 404)

    assert "does not exist" in error_of(client.post("/api/edit", json={
        "result": rid, "ops": [{"op": "move", "index": 7, "dx": 0.1, "dy": 0}]}))
    assert "nothing to edit" in error_of(client.post("/api/edit", json={"result": rid}))
    assert "new prompt is empty" in error_of(client.post("/api/edit", json={
        "result": rid, "ops": [{"op": "reprompt", "index": 1, "prompt": " "}]}))
    assert "no result" in error_of(client.post("/api/edit", json={"result": "../" + rid}), 404)
    for path in (f"/api/results/{rid}/files/..%2Fscene.json", f"/api/results/{rid}/files/x.py",
                 "/api/results/..%2F..%2Fetc/files/scene.json", "/api/jobs/nope"):
        assert client.get(path).status_code == 404
    bad_json = [("files", ("scene.json", b"{]", "application/json"))]
    assert "not valid JSON" in error_of(client.post("/api/open", files=bad_json))
    assert "no scene.json" in error_of(client.post(
        "/api/open", files=[("files", ("notes.txt", b"hi", "text/plain"))]))
    assert client.get("/api/info").status_code == 200  # still serving


def test_cancel_and_two_clients_queued(app_server, generated):
    """Client A's job runs (held between steps), B's waits its turn behind it; A is
    cancelled between two steps, a job queued by B is cancelled before it starts, and B's
    first job then runs to the end."""
    hook = app_server.app.state.pipe.progress_hook
    gate, reached = threading.Event(), threading.Event()

    def hold(done: int, total: int) -> None:
        reached.set()
        gate.wait(60)

    body = {"scene": SCENE, "steps": STEPS}
    with httpx.Client(base_url=app_server.url, headers={"x-client": "A"}) as a, \
            httpx.Client(base_url=app_server.url, headers={"x-client": "B"}) as b, \
            hook.listen(hold):
        first = a.post("/api/generate", json=body).json()
        second = b.post("/api/generate", json={**body, "seed": 1}).json()
        third = b.post("/api/generate", json={**body, "seed": 2}).json()
        assert reached.wait(120), "the first job never reached a step"
        queue = {j["id"]: j for j in b.get("/api/jobs").json()}
        assert queue[first["id"]]["status"] == "running"
        assert queue[first["id"]]["client"] == "A" and queue[second["id"]]["client"] == "B"
        assert (queue[second["id"]]["status"], queue[second["id"]]["position"]) == ("queued", 1)
        assert queue[third["id"]]["position"] == 2
        assert b.post(f"/api/jobs/{third['id']}/cancel").json()["status"] == "cancelled"
        assert a.post(f"/api/jobs/{first['id']}/cancel").status_code == 200
        gate.set()
        assert wait_job(a, first["id"])["status"] == "cancelled"
        done = wait_job(b, second["id"])
        assert wait_job(b, third["id"])["status"] == "cancelled"
    assert done["status"] == "done" and done["result"]
    scene = httpx.get(f"{app_server.url}/api/results/{done['result']}").json()["scene"]
    assert scene["seed"] == 1
