from tests.helpers import balance, create_job, register


async def test_register_then_create_job(api):
    user = await register(api)
    assert user["balance"] == 3
    presets = (await api.get("/api/presets")).json()
    assert {"bw", "sharpen", "upscale2x"} <= {p["slug"] for p in presets}
    response = await create_job(api)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued" and job["position"] == 1
    assert (job["options"], job["outputs"], job["has_result"]) == ({}, [], False)
    assert [(f["index"], f["slot"], f["kind"]) for f in job["inputs"]] == [(0, "photo", "image")]
    assert await balance(api) == 2
