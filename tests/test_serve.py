"""emosent serve against a real uvicorn server on 127.0.0.1: the analysis, the bad requests, the
queue's bound, a client that disconnects mid-upload, and a server killed mid-job."""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from conftest import run_cli
from emosent.analyze import analyze
from emosent.model import EmotionSentimentModel
from emosent.synthetic import write_clip
from serving import Server, files, talk, tiny_model, wait_for

TOKEN = "test-token-1234"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUEUE_SIZE = 4
BOUNDARY = "emosent-test-boundary"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return talk(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    running = Server(model_dir, tmp_path_factory.mktemp("served") / "data", "--token", TOKEN, "--max-upload-mb", "1",
                     "--queue-size", str(QUEUE_SIZE)).start()
    yield running
    running.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


def test_submit_poll_done_is_what_analyze_gives(server, client, clip, model_dir):
    video, subtitles = clip
    answer = client.post("/v1/analyses", files=files(video, subtitles))
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["status"] in ("queued", "running") and answer.headers["location"] == f"/v1/analyses/{job['id']}"
    done = wait_for(client, job["id"])
    assert done["status"] == "done", done
    assert done["progress"] == {"done": 2, "total": 2} and done["segments"] == "subtitles talk.srt"
    direct = analyze(video, EmotionSentimentModel.from_pretrained(model_dir), subtitles=subtitles)
    result = done["result"]
    assert set(result) == set(direct) and result["video"] == "talk.mp4"
    for key in ("utterances", "speakers", "skipped", "warnings", "duration_s"):  # the same pipeline, the same numbers
        assert result[key] == direct[key], key
    assert str(server.data_dir) not in json.dumps(done)  # no server path in what the client reads

    png = client.get(f"/v1/analyses/{job['id']}/timeline.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG") and len(png.content) > 10_000

    assert client.delete(f"/v1/analyses/{job['id']}").status_code == 204
    assert client.get(f"/v1/analyses/{job['id']}").status_code == 404
    assert client.get(f"/v1/analyses/{job['id']}/timeline.png").status_code == 404
    assert not list((server.data_dir / "results").glob(f"{job['id']}*")) and server.leftovers() == []


def test_token_health_and_unknown_ids(server, client):
    plain = httpx.Client(base_url=server.url, timeout=30)
    assert plain.get("/healthz").json() == {"status": "ok"}
    assert plain.get("/readyz").json()["status"] == "ready"
    assert plain.get("/v1/info").json()["token_required"] is True
    api = plain.get("/openapi.json").json()["paths"]  # the OpenAPI page documents the API
    assert {"/v1/analyses", "/v1/analyses/{job_id}", "/v1/analyses/{job_id}/timeline.png", "/healthz", "/readyz"} <= set(api)
    assert "multipart/form-data" in api["/v1/analyses"]["post"]["requestBody"]["content"]
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = plain.get(f"/v1/analyses/{'0' * 32}", headers=headers)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in refused.json()["detail"]
    refused = plain.post("/v1/analyses", files={"video": ("a.mp4", b"x" * 1000)})
    assert refused.status_code == 401
    for job_id in ("0" * 32, "not-an-id", "x" * 40):
        missing = client.get(f"/v1/analyses/{job_id}")
        assert missing.status_code == 404 and "no analysis" in missing.json()["detail"]
        assert client.delete(f"/v1/analyses/{job_id}").status_code == 404


def test_bad_uploads_are_named_and_leave_nothing(server, client, clip, tmp_path):
    video, subtitles = clip
    notes = tmp_path / "notes.mp4"
    notes.write_text("this is not a video\n")
    answer = client.post("/v1/analyses", files=files(notes, subtitles))
    assert answer.status_code == 415 and answer.json()["detail"].startswith("video notes.mp4: not a readable media file")
    assert str(server.data_dir) not in answer.text

    bad = tmp_path / "bad.srt"
    bad.write_text("1\n00:00:00,000 --> 00:00:00,500\nfine\n\n2\n00:00:00,500 -> 00:00:01,000\nbroken arrow\n")
    answer = client.post("/v1/analyses", files=files(video, bad))
    detail = answer.json()["detail"]
    assert answer.status_code == 422 and detail.startswith("subtitles bad.srt: not a valid SRT file at line 5"), detail

    transcript = tmp_path / "t.json"
    transcript.write_text('[{"start": 0, "end": "1", "text": "hi"}]')
    answer = client.post("/v1/analyses", files=files(video, transcript, field="transcript"))
    assert answer.status_code == 422 and answer.json()["detail"].startswith("transcript t.json: ")

    answer = client.post("/v1/analyses", files=files(video, tmp_path / "notes.mp4"))
    assert answer.status_code == 422 and "subtitles 'notes.mp4': not .srt or .vtt" in answer.json()["detail"]
    answer = client.post("/v1/analyses", files={"subtitles": ("a.srt", subtitles.read_bytes())})
    assert answer.status_code == 422 and "no 'video' file" in answer.json()["detail"]
    answer = client.post("/v1/analyses", data={"video": "talk.mp4"}, headers={"content-type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 415 and "multipart/form-data" in answer.json()["detail"]
    # a client's file name is never a path here
    answer = client.post("/v1/analyses", files={"video": ("../../../escape.mp4", video.read_bytes()),
                                                "subtitles": ("../x.srt", subtitles.read_bytes())})
    assert answer.status_code == 202 and answer.json()["video"] == "escape.mp4"
    assert wait_for(client, answer.json()["id"])["status"] == "done"
    assert not list(server.data_dir.parent.rglob("escape.mp4")) and server.leftovers() == []


def test_a_playlist_naming_a_file_on_the_server_is_refused(server, client, clip, tmp_path):
    # issue 28: an uploaded .m3u8 whose entry names a media file on the server's disk had FFmpeg's
    # HLS demuxer read that file, and the job's result held its transcript
    video, _ = clip
    beside_upload = os.path.relpath(video, server.data_dir / "uploads" / "a-job")  # uploads/JOB_ID/video.m3u8
    for entry in (str(video), beside_upload):
        playlist = tmp_path / "list.m3u8"
        playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{entry}\n#EXT-X-ENDLIST\n")
        answer = client.post("/v1/analyses", files=files(playlist))  # no subtitles: speech recognition's path
        detail = answer.json()["detail"]
        assert answer.status_code == 415 and detail.startswith("video list.m3u8: a playlist or a format that is not read"), detail
        assert str(server.data_dir) not in answer.text and server.leftovers() == []


def raw_post(port: int, length: int | None, chunked: bool = False) -> socket.socket:
    """A POST whose headers are sent and whose body is not: the caller sends it, or not."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}"
    sock.sendall(f"POST /v1/analyses HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
                 f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{framing}\r\n\r\n".encode())
    return sock


def part_head(name: str = "video", filename: str = "big.mp4") -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: video/mp4\r\n\r\n").encode()


def read_answer(sock: socket.socket) -> tuple[int, dict]:
    answer = http.client.HTTPResponse(sock)
    answer.begin()
    return answer.status, json.loads(answer.read())


def test_oversize_is_413_and_leaves_nothing(server):
    # declared too large: refused before a byte of the body is read
    with raw_post(server.port, 5_000_000) as sock:
        status, body = read_answer(sock)
    assert status == 413 and "at most 1.0 MB" in body["detail"]
    # not declared (chunked): refused once the stream passes the limit, the partial file removed
    with raw_post(server.port, None, chunked=True) as sock:
        piece = b"\0" * 100_000
        chunks = [part_head()] + [piece] * 30  # 3 MB
        sock.sendall(b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n")
        status, body = read_answer(sock)
    assert status == 413 and "at most 1.0 MB" in body["detail"]
    assert server.leftovers() == []


def test_a_client_that_disconnects_mid_upload_leaves_nothing(server, client, clip):
    sock = raw_post(server.port, 900_000)
    sock.sendall(part_head() + b"\0" * 300_000)
    deadline = time.monotonic() + 30
    while not any(p.endswith("video.mp4") for p in server.leftovers()):  # streamed to disk as it comes
        assert time.monotonic() < deadline, "the upload never reached the uploads folder"
        time.sleep(0.05)
    sock.close()
    deadline = time.monotonic() + 30
    while server.leftovers():
        assert time.monotonic() < deadline, f"left behind: {server.leftovers()}"
        time.sleep(0.05)
    # and its place in the queue was given back: the queue takes a job
    answer = client.post("/v1/analyses", files=files(*clip))
    assert answer.status_code == 202
    assert wait_for(client, answer.json()["id"])["status"] == "done"


def test_twenty_concurrent_submissions(server, clip):
    video, subtitles = clip

    def submit(_):
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as c:
            return c.post("/v1/analyses", files=files(video, subtitles))

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(submit, range(20)))
    accepted = [a.json()["id"] for a in answers if a.status_code == 202]
    refused = [a for a in answers if a.status_code == 503]
    assert len(accepted) + len(refused) == 20, [(a.status_code, a.text) for a in answers]
    assert accepted and refused  # the queue holds QUEUE_SIZE; twenty at once overflow it
    for a in refused:
        assert int(a.headers["retry-after"]) >= 1 and "the queue is full" in a.json()["detail"]
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        dropped = accepted.pop()  # the last one in is still waiting: deleted, it never runs
        assert c.delete(f"/v1/analyses/{dropped}").status_code == 204
        assert c.get(f"/v1/analyses/{dropped}").status_code == 404
        assert [wait_for(c, job_id, timeout_s=300)["status"] for job_id in accepted] == ["done"] * len(accepted)
    assert server.leftovers() == []


def test_startup_errors_are_one_line(server, model_dir, tmp_path):
    for args, expected in (
        (["--host", "0.0.0.0", "--data-dir", tmp_path / "a"], "--host 0.0.0.0: beyond this machine"),
        (["--token", TOKEN, "--data-dir", server.data_dir], "is in use by another emosent process"),
    ):
        result = run_cli("serve", "--model", model_dir, *args, env={"EMOSENT_TOKEN": ""})
        assert result.returncode == 2 and expected in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_restart_with_a_job_in_flight(model_dir, tmp_path):
    """kill -9 mid-job: after a restart on the same data folder the finished result is still
    there, the running and queued jobs are failed with the documented reason, and no upload
    (not even one half received when the server died) is left."""
    data = tmp_path / "data"
    small, small_srt = talk(tmp_path / "small")
    long, long_srt = talk(tmp_path / "long", duration_s=8.0, cues=16)
    first = Server(model_dir, data, "--batch-size", "1").start()
    try:
        with httpx.Client(base_url=first.url, timeout=60) as c:
            finished = wait_for(c, c.post("/v1/analyses", files=files(small, small_srt)).json()["id"])
            assert finished["status"] == "done"
            running = c.post("/v1/analyses", files=files(long, long_srt)).json()["id"]
            queued = c.post("/v1/analyses", files=files(long, long_srt)).json()["id"]
            half = raw_post(first.port, 500_000)
            half.sendall(part_head() + b"\0" * 100_000)
            wait_for(c, running, states=("running",), until=lambda job: job["progress"]["done"] >= 2)
            assert c.get(f"/v1/analyses/{queued}").json()["status"] == "queued"
        first.kill()
        half.close()
    finally:
        first.stop()

    second = Server(model_dir, data).start()
    try:
        with httpx.Client(base_url=second.url, timeout=60) as c:
            for job_id in (running, queued):
                job = c.get(f"/v1/analyses/{job_id}").json()
                assert job["status"] == "failed" and job["error"] == "interrupted by a server restart; submit again"
            again = c.get(f"/v1/analyses/{finished['id']}").json()
            assert again["status"] == "done" and again["result"] == finished["result"]
            assert c.get(f"/v1/analyses/{finished['id']}/timeline.png").status_code == 200
        assert second.leftovers() == []
        assert sorted(p.stem for p in (data / "results").iterdir()) == [finished["id"]] * 2  # .json and .png
    finally:
        second.stop()


# ---------------------------------------------------------------------------------------------
# Hostile clients (issue 28): other sites' pages, DNS rebinding, slow uploads, hostile text files
# and file names. A token-less loopback server: the default, and the one a web page can reach.

UPLOAD_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def open_server(model_dir, tmp_path_factory):
    running = Server(model_dir, tmp_path_factory.mktemp("open") / "data", "--queue-size", "1",
                     "--upload-timeout-s", str(UPLOAD_TIMEOUT_S)).start()
    yield running
    running.stop()


def test_other_sites_cannot_submit_or_delete_and_rebinding_hosts_are_refused(open_server, clip):
    video, subtitles = clip
    own = open_server.url
    with httpx.Client(base_url=own, timeout=60) as c:
        for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                        {"Origin": f"http://localhost:{open_server.port + 1}"},  # another port is another site
                        {"Referer": "https://evil.example/page.html"}):
            answer = c.post("/v1/analyses", files=files(video, subtitles), headers=headers)
            assert answer.status_code == 403 and "cross-site request refused" in answer.json()["detail"], (headers, answer.text)
        assert open_server.leftovers() == [] and not list((open_server.data_dir / "results").iterdir())
        # the server's own page (fetch sends its Origin), and a client without one, are served
        for headers in ({"Origin": own}, {"Referer": f"{own}/"}, {}):
            answer = c.post("/v1/analyses", files=files(video, subtitles), headers=headers)
            assert answer.status_code == 202, (headers, answer.text)
            job_id = answer.json()["id"]
            assert wait_for(c, job_id)["status"] == "done"
            refused = c.delete(f"/v1/analyses/{job_id}", headers={"Origin": "https://evil.example"})
            assert refused.status_code == 403 and c.get(f"/v1/analyses/{job_id}").status_code == 200
            assert c.delete(f"/v1/analyses/{job_id}", headers=headers).status_code == 204
        # DNS rebinding: evil.example resolving to 127.0.0.1 sends its own name as the Host
        for path in ("/v1/info", "/"):
            assert c.get(path, headers={"Host": "evil.example"}).status_code == 400
            assert c.get(path, headers={"Host": f"evil.example:{open_server.port}"}).status_code == 400
            assert c.get(path, headers={"Host": f"localhost:{open_server.port}"}).status_code == 200
        posted = c.post("/v1/analyses", files=files(video, subtitles), headers={"Host": "evil.example", "Origin": "http://evil.example"})
        assert posted.status_code == 400 and open_server.leftovers() == []


def test_a_stalled_upload_gets_408_and_frees_its_queue_place(open_server, clip):
    video, subtitles = clip
    with httpx.Client(base_url=open_server.url, timeout=60) as c:
        slow = socket.create_connection(("127.0.0.1", open_server.port), timeout=30)
        slow.sendall(f"POST /v1/analyses HTTP/1.1\r\nHost: 127.0.0.1:{open_server.port}\r\n"
                     f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 900000\r\n\r\n".encode()
                     + part_head() + b"\0" * 1000)
        started = time.monotonic()
        try:
            # the only queue place is the stalled upload's: others are told to come back
            deadline = started + 30
            while not open_server.leftovers():
                assert time.monotonic() < deadline, "the slow upload never started"
                time.sleep(0.05)
            assert c.post("/v1/analyses", files=files(video, subtitles)).status_code == 503
            status, body = read_answer(slow)
            assert status == 408 and f"more than {UPLOAD_TIMEOUT_S} s (--upload-timeout-s)" in body["detail"]
            assert time.monotonic() - started < UPLOAD_TIMEOUT_S + 15
        finally:
            slow.close()
        assert open_server.leftovers() == []
        answer = c.post("/v1/analyses", files=files(video, subtitles))
        assert answer.status_code == 202, answer.text
        assert wait_for(c, answer.json()["id"])["status"] == "done"


def test_hostile_text_files_are_422_and_file_names_are_shown_clean(open_server, clip, tmp_path):
    video, subtitles = clip
    overflow = tmp_path / "overflow.srt"
    overflow.write_text("1\n99999999999:00:00,000 --> 99999999999:00:01,000\nhello\n")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with httpx.Client(base_url=open_server.url, timeout=60) as c:
        for path, field, needle in ((overflow, "subtitles", "subtitles overflow.srt: a timestamp too large"),
                                    (deep, "transcript", "transcript deep.json: JSON nested too deeply")):
            answer = c.post("/v1/analyses", files=files(video, path, field=field))
            assert answer.status_code == 422 and answer.json()["detail"].startswith(needle), answer.text
        # frames larger than 8K: refused at upload, before a frame is decoded
        huge = write_clip(tmp_path / "huge.mp4", duration_s=0.1, fps=10, width=7696, height=4320,
                          frame_fn=lambda i, t: np.zeros((4320, 7696, 3), np.uint8))
        answer = c.post("/v1/analyses", files=files(huge, subtitles))
        assert answer.status_code == 422 and answer.json()["detail"].startswith(
            "video huge.mp4: frames of 7696x4320 pixels, more than the 7680x4320 (8K)"), answer.text
        assert open_server.leftovers() == []
        # names a client sends with quotes, tabs or a bidi override are shown without them; a CR/LF
        # ends the header line, and what follows it is no part of the name
        for sent, shown in (('evil"name.mp4', "evilname.mp4"), ("a\r\nX-Injected: 1.mp4", "a"),
                            ("tab\there\u202e.mp4", "tabhere.mp4"), ('"""', "the video upload")):
            head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="video"; filename="'.encode()
                    + sent.replace('"', '\\"').encode() + b'"\r\nContent-Type: video/mp4\r\n\r\n')
            body = (head + video.read_bytes() + f"\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"subtitles\"; "
                    f"filename=\"talk.srt\"\r\n\r\n".encode() + subtitles.read_bytes() + f"\r\n--{BOUNDARY}--\r\n".encode())
            answer = c.post("/v1/analyses", content=body, headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
            assert answer.status_code == 202, (sent, answer.text)
            assert answer.json()["video"] == shown, (sent, answer.json()["video"])
            done = wait_for(c, answer.json()["id"])
            assert done["status"] == "done" and done["result"]["video"] == shown
            assert c.delete(f"/v1/analyses/{done['id']}").status_code == 204


@pytest.mark.parametrize("bound, allowed, expected", [
    ("127.0.0.1", None, ["localhost", "127.0.0.1", "[::1]"]),
    ("::1", None, ["localhost", "127.0.0.1", "[::1]"]),
    ("192.168.1.5", None, ["localhost", "127.0.0.1", "[::1]", "192.168.1.5"]),
    ("0.0.0.0", None, ["*"]),
    ("0.0.0.0", "emosent.example.org, *.example.org", ["emosent.example.org", "*.example.org"]),
])
def test_the_host_allow_list(bound, allowed, expected):
    from emosent.serve.guards import allowed_hosts

    assert allowed_hosts(bound, allowed) == expected


def test_bad_allowed_hosts_are_one_line_at_startup(model_dir, tmp_path):
    for value, needle in ((" , ", "--allowed-hosts: empty"), ("a*.example.org", "not a host name or a pattern")):
        result = run_cli("serve", "--model", model_dir, "--data-dir", tmp_path / "d", "--allowed-hosts", value)
        assert result.returncode == 2 and needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
