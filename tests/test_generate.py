"""persona_lib.generate: the plan, the prompt and schema, the gate, and whole runs against real
servers on loopback: the fault-injecting one (faults, kill and resume, the key, the spend cap)
and the real llama.cpp server with the embedded model."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fault_server import completion, good_content, item_key
from persona_lib import dataset, dedup, generate, llm, teacher
from persona_lib.spec import load_spec

TESTS = Path(__file__).resolve().parent
KEY = "sk-test-SECRET-7f3a9c1e5b2d4068"


@pytest.fixture(scope="module")
def spec():
    return load_spec("taskmaster")


def fast_config(**kw) -> generate.GenerateConfig:
    return generate.GenerateConfig(**{"retry": llm.RetryPolicy.fast(), "spend_cap_usd": None, "progress": False, **kw})


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


# --------------------------------------------------------------------------- plan, prompt, schema, parsing


def test_plan_is_deterministic_unique_and_balanced(spec):
    items = teacher.plan(spec, 96)
    assert items == teacher.plan(spec, 96)
    assert len({it.id for it in items}) == 96
    assert all(teacher.index_of(it.id) == it.index for it in items)
    assert teacher.index_of("tm-0001") is None
    assert {it.topic for it in items[:len(spec.topics)]} == set(spec.topics)  # round-robin topics
    assert {p for it in items[:len(spec.signature_vocabulary)] for p in it.phrases} == set(spec.signature_vocabulary)
    assert {it.turns for it in items} == {1, 2, 3}
    assert len({(it.profile, it.situation) for it in items}) > 60  # scenarios vary
    prompts = [json.dumps(teacher.prompt_messages(spec, it)) for it in teacher.plan(spec, 1000)]
    assert len(set(prompts)) == 1000  # no request is asked twice under two ids
    other = teacher.plan(spec, 96, seed=1)
    assert not {it.id for it in items} & {it.id for it in other}


def test_prompt_carries_persona_topic_scenario_and_turns(spec):
    item = next(it for it in teacher.plan(spec, 40) if it.turns == 3)
    system, user = (m["content"] for m in teacher.prompt_messages(spec, item))
    assert spec.name in system and spec.traits[0].description.split(":")[0] in system
    assert all(rule in system for rule in spec.dont)
    assert item.topic.replace("_", " ") in user and item.profile in user and item.situation in user
    assert "exactly 3 user messages" in user and '"turn_3"' in user
    assert all(f'"{p}"' in user for p in item.phrases)


def test_schema_fixes_the_turn_count_in_both_dialects(spec):
    schema = teacher.conversation_schema(2, max_chars=100)
    assert schema["required"] == ["turn_1", "turn_2"] and schema["additionalProperties"] is False
    strict = llm.response_format(schema, "json_schema")["json_schema"]["schema"]
    assert strict["required"] == ["turn_1", "turn_2"] and "maxLength" not in json.dumps(strict)
    assert llm.response_format(schema, "json_object")["schema"]["properties"]["turn_1"]["properties"]["user"][
        "maxLength"] == 100
    assert teacher.chars_per_string(96, 1) == 133 and teacher.chars_per_string(800, 3) < 800 * 3.5 / 6


def test_parse_reply():
    good = {"turn_1": {"user": " hi there ", "assistant": "Hello, let's plan."}}
    messages = teacher.parse_reply(json.dumps(good), "stop", 1)
    assert messages == [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "Hello, let's plan."}]
    assert teacher.parse_reply("```json\n" + json.dumps(good) + "\n```", "stop", 1) == messages
    cases = [('{"turn_1": {"user": "a"', "length", 1, "truncated"),
             ("Sure! {'turn_1': {}}", "stop", 1, "invalid_json"),
             ('{"turns": [1, 2]}', "stop", 1, "wrong_shape"),
             (json.dumps(good), "stop", 2, "wrong_turn_count")]
    for text, finish, turns, reason in cases:
        with pytest.raises(teacher.ReplyError) as e:
            teacher.parse_reply(text, finish, turns)
        assert e.value.reason == reason


def test_near_dup_index_agrees_with_dataset_dedup():
    shipped = dataset.load_shipped("taskmaster")
    new = []
    for k, rec in enumerate(shipped[:60]):
        user = rec["messages"][0]["content"]
        words = user.split()
        if k % 3 == 0 and len(words) > 25:  # a near-copy: one word changed
            words[len(words) // 2] = "zebra"
        elif k % 3 == 1:  # a fresh request
            words = [f"w{k}x{j}" for j in range(12)]
        new.append({**rec, "id": f"new-{k}", "messages": [{"role": "user", "content": " ".join(words)},
                                                          rec["messages"][1]]})
    new += [{**new[1], "id": "new-copy-of-1"}]  # a duplicate inside the batch
    _, report = dedup.dedup(new, against=shipped)
    index = dedup.NearDupIndex(shipped)
    dropped = {r["id"] for r in new if index.check_and_add(r) is not None}
    assert dropped == {d.id for d in report.dropped}
    assert "new-copy-of-1" in dropped and len(dropped) > 10


def test_config_is_validated_and_smoke_is_small():
    for bad in (dict(n=0), dict(concurrency=0), dict(max_tokens=4), dict(turn_weights=()), dict(reasks=-1),
                dict(n=10, max_items=5), dict(spend_cap_usd=0), dict(near_dup_threshold=0), dict(min_words=0)):
        with pytest.raises(ValueError):
            generate.GenerateConfig(**bad)
    smoke = generate.GenerateConfig.smoke()
    assert smoke.n == 2 and smoke.max_tokens <= 128 and smoke.item_limit == 2
    assert generate.GenerateConfig.smoke(n=4).item_limit == 4
    assert generate.GenerateConfig(n=10).item_limit == 40


def test_estimate_uses_the_dated_price_table(spec):
    config = generate.GenerateConfig(n=200)
    openai = llm.Endpoint.openai("gpt-4o-mini-2024-07-18", api_key=KEY)
    est = generate.estimate(spec, config, openai, against=dataset.load_shipped("taskmaster"))
    assert est.items == 200 and est.price == generate.PRICES["gpt-4o-mini"]
    assert 0 < est.cost_usd < est.cost_usd_max < 1.0 and generate.PRICES_AS_OF in str(est)
    half = generate.estimate(spec, config, openai, batch=True)
    assert half.price == tuple(p / 2 for p in est.price)
    assert generate.estimate(spec, config, openai, done=150).items == 50
    local = llm.Endpoint.compatible("http://127.0.0.1:1/v1", "m", kind="llamacpp")
    assert generate.estimate(spec, config, local).cost_usd == 0.0
    unknown = generate.estimate(spec, config, llm.Endpoint.compatible("http://x/v1", "some-model"))
    assert unknown.cost_usd is None and "no price known" in str(unknown)


# --------------------------------------------------------------------------- runs against the fault server


def test_faulty_server_run_ends_with_exactly_n_valid_unique_records(spec, serve, tmp_path):
    server, url = serve(latency=0.02, hang=1.0, seed=7)
    endpoint = llm.Endpoint.compatible(url, "fake", timeout=0.4)
    out = tmp_path / "generated.jsonl"
    result = generate.run(spec, endpoint, out, fast_config(n=40, concurrency=8),
                          against=dataset.load_shipped("taskmaster"))
    records = dataset.load_records(out, persona="taskmaster")  # validates every line
    assert len(records) == 40 == len({r["id"] for r in records}) == result.accepted
    server.settle()
    stats = server.stats()
    report = json.loads(result.report_path.read_text())
    context = json.dumps({"server": stats, "report": {k: report[k] for k in ("requests", "retries", "reasks",
                                                                          "rejected_this_run", "failed_this_run")}})
    assert all(stats["faults"][f] > 0 for f in ("rate_limit", "server_error", "timeout")), context
    assert stats["faults"]["truncated"] + stats["faults"]["invalid_json"] > 0, context
    # Every request the client counts reached the server, except one the client gave up on (its
    # 0.4 s timeout) before the server read it, which a loaded machine can delay that long.
    unseen = report["retries"].get("timeout", 0) - stats["faults"]["timeout"]
    assert stats["requests"] <= report["requests"] <= stats["requests"] + max(unseen, 0), context
    assert report["reasks"] > 0, context
    assert set(report["retries"]) >= {"429", "500", "timeout"}, context
    assert report["accepted_this_run"] == 40 and report["stopped"] is None
    ledger = lines(result.ledger)
    assert sum(r["status"] == "accepted" for r in ledger) == 40
    assert {r["id"] for r in ledger if r["status"] == "accepted"} == {r["id"] for r in records}
    assert report["vocabulary"]["phrases"] == len(spec.signature_vocabulary)

    again = generate.run(spec, endpoint, out, fast_config(n=40, concurrency=8))
    assert server.stats()["requests"] == stats["requests"] and again.report["accepted_this_run"] == 0, context
    more = generate.run(spec, endpoint, out, fast_config(n=45, concurrency=8))
    assert len(more.records) == 45 and dataset.load_records(out)[:40] == records  # appended, never rewritten


KILL_SCRIPT = """
import sys
from persona_lib import generate, llm
from persona_lib.spec import load_spec
url, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
endpoint = llm.Endpoint.compatible(url, "fake", timeout=2.0)
config = generate.GenerateConfig(n=n, concurrency=4, progress=False, spend_cap_usd=None,
                                 retry=llm.RetryPolicy(max_attempts=30, base_delay=0.05, max_delay=0.5))
generate.run(load_spec("taskmaster"), endpoint, out, config)
"""


def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(spec, serve, tmp_path):
    server, url = serve(latency=0.25, hang=3.0, seed=11)
    out, n, concurrency = tmp_path / "generated.jsonl", 40, 4
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, url, str(out), str(n)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while len(lines(out)) < 12:
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "the generator never got going"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    server.settle()  # the requests that were on the wire reach the log
    before_text = out.read_text()
    done_before = {r["id"] for r in lines(out)} | {r["id"] for r in lines(generate.ledger_path(out))
                                                   if r["status"] != "failed"}
    asked_before = {r["item"] for r in server.log}
    cut = len(server.log)
    assert 12 <= len(done_before) < n

    config = generate.GenerateConfig(n=n, concurrency=concurrency, progress=False, spend_cap_usd=None,
                                     retry=llm.RetryPolicy(max_attempts=30, base_delay=0.05, max_delay=0.5))
    result = generate.run(spec, llm.Endpoint.compatible(url, "fake", timeout=2.0), out, config)

    records = dataset.load_records(out, persona="taskmaster")
    assert len(records) == n == len({r["id"] for r in records})
    complete_before = before_text[:before_text.rfind("\n") + 1]
    assert out.read_text().startswith(complete_before)  # every received record survived, in place
    key_of = {it.id: item_key(teacher.prompt_messages(spec, it)) for it in teacher.plan(spec, config.item_limit)}
    asked_after = {r["item"] for r in server.log[cut:]}
    assert not asked_after & {key_of[i] for i in done_before}  # nothing finished was asked again
    asked_again = asked_after & asked_before
    assert len(asked_again) <= concurrency  # at most the requests in flight at the kill
    assert result.report["accepted_this_run"] == n - len([i for i in done_before if i in {r["id"] for r in records}])


def test_no_written_file_contains_the_api_key(spec, serve, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server, url = serve(latency=0.01, seed=5, api_key=KEY, echo_auth=True,
                        faults=("server_error", "rate_limit", "invalid_json"))
    endpoint = llm.Endpoint.openai("gpt-4o-mini", base_url=url, timeout=0.4)  # key from the environment
    runs = tmp_path / "runs"
    config = fast_config(n=30, concurrency=6, spend_cap_usd=1.0,
                         retry=llm.RetryPolicy(max_attempts=1))  # every 500 gives up: its message is written
    result = generate.run(spec, endpoint, runs / "data" / "generated.jsonl", config)
    generate.write_batch_file(spec, endpoint.model, runs / "data" / "batch.jsonl", config)
    server.settle()
    stats = server.stats()
    assert stats["requests"] > 30 and stats["auth_failures"] == 0  # the key was sent, and right
    assert result.report["failed_this_run"] and any("Bearer ********" in e for e in result.report["failure_examples"])
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 4
    for path in written:
        data = path.read_bytes()
        assert KEY.encode() not in data and b"SECRET" not in data, f"the key leaked into {path}"
    captured = capsys.readouterr()
    assert "SECRET" not in captured.out + captured.err + caplog.text


def test_spend_cap_stops_cleanly_and_holds_across_reruns(spec, serve, tmp_path):
    server, url = serve(fault_rate=0.0)
    endpoint = llm.Endpoint.compatible(url, "fake")
    out = tmp_path / "generated.jsonl"
    config = fast_config(n=20, concurrency=1, spend_cap_usd=3.0, price=(1000.0, 1000.0))  # ~$0.8 an example
    result = generate.run(spec, endpoint, out, config)
    assert result.report["stopped"].startswith("spend cap") and 0 < result.accepted < 20
    assert result.report["cost_usd"] <= 3.0
    # A rerun spends only what is left under the cap (the estimate per example decides whether one
    # more fits); once nothing fits, a rerun sends no request at all.
    again = generate.run(spec, endpoint, out, config)
    assert again.report["stopped"].startswith("spend cap") and again.report["cost_usd"] <= 3.0
    server.settle()
    requests = server.stats()["requests"]
    third = generate.run(spec, endpoint, out, config)
    assert server.stats()["requests"] == requests and third.report["stopped"].startswith("spend cap")
    assert third.report["cost_usd"] == again.report["cost_usd"]
    generate.run(spec, endpoint, out, fast_config(n=20, spend_cap_usd=1.0))  # a server on this machine: free
    remote = llm.Endpoint.compatible("http://teacher.example/v1", "fake")  # refused before any request
    with pytest.raises(ValueError, match="no price known"):
        generate.run(spec, remote, out, fast_config(n=20, spend_cap_usd=1.0))


def test_batch_files_round_trip_through_the_gate(spec, tmp_path):
    config = fast_config(n=6, turn_weights=(1.0,))
    batch_in = generate.write_batch_file(spec, "gpt-4o-mini", tmp_path / "batch_input.jsonl", config)
    requests = lines(batch_in)
    assert len(requests) == 6 and {r["url"] for r in requests} == {"/v1/chat/completions"}
    assert requests[0]["body"]["response_format"]["type"] == "json_schema"
    shipped_user = dataset.load_shipped("taskmaster")[2]["messages"][0]["content"]
    rows = []
    for k, req in enumerate(requests):
        content = json.loads(good_content(req["body"]))
        if k == 2:
            content["turn_1"]["user"] = shipped_user
        if k == 3:
            content["turn_1"]["assistant"] = "As an AI language model, I suggest a plan."
        text = json.dumps(content) if k != 4 else "not json"
        response = {"status_code": 200, "body": completion(req["body"], text)}
        if k == 5:
            response = {"status_code": 500, "body": {"error": {"message": "server error"}}}
        rows.append({"id": f"batch_req_{k}", "custom_id": req["custom_id"], "response": response, "error": None})
    batch_out = tmp_path / "batch_output.jsonl"
    batch_out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "generated.jsonl"
    result = generate.read_batch_output(spec, "gpt-4o-mini", batch_out, out, config)
    assert result.accepted == 2
    assert result.report["rejected_this_run"] == {"near_duplicate": 1, "generic_voice": 1, "invalid_json": 1}
    assert result.report["failed_this_run"] == {"batch_http_500": 1}
    assert result.report["cost_usd"] > 0 and tuple(result.report["estimate"]["price"]) == (0.075, 0.3)
    assert generate.read_batch_output(spec, "gpt-4o-mini", batch_out, out, config).report["accepted_this_run"] == 0
    follow_up = lines(generate.write_batch_file(spec, "gpt-4o-mini", tmp_path / "batch2.jsonl", config, output=out))
    assert [r["custom_id"] for r in follow_up][:1] == [requests[5]["custom_id"]] and len(follow_up) == 4


def test_an_edited_persona_sets_earlier_conversations_aside(spec, serve, tmp_path, capsys):
    """Lesson 3 run, the tone edited in lesson 1, lesson 3 run again: the earlier conversations
    no longer count toward n nor reach merged.jsonl; they are kept apart, never overwritten,
    through edits back and forth."""
    from dataclasses import replace

    server, url = serve(fault_rate=0.0)
    endpoint = llm.Endpoint.compatible(url, "fake")
    out = tmp_path / "generated.jsonl"
    first = generate.run(spec, endpoint, out, fast_config(n=3))
    assert first.accepted == 3 and generate.spec_path(out).is_file()
    assert generate.run(spec, endpoint, out, fast_config(n=3)).report["accepted_this_run"] == 0  # same spec: resumed
    capsys.readouterr()
    edited = replace(spec, tone=spec.tone + " Short sentences, always.")
    again = generate.run(edited, endpoint, out, fast_config(n=3))
    assert again.report["accepted_this_run"] == 3 and again.records != first.records
    kept = sorted(p.name for p in tmp_path.glob("generated.before-*"))
    tag = kept[0].split(".")[1]
    assert kept == [f"generated.{tag}.{rest}" for rest in ("jsonl", "ledger.jsonl", "report.json", "spec.json")]
    assert lines(tmp_path / f"generated.{tag}.jsonl") == first.records
    assert "spec changed since generated.jsonl was written: its 3 conversations" in capsys.readouterr().out
    written_for = json.loads(generate.spec_path(out).read_text())["specs"]["taskmaster"]
    assert written_for["spec"]["tone"] == edited.tone
    # Back to the first spec, then the edit again: each earlier file is set aside under a new name.
    for version in (spec, edited):
        generate.run(version, endpoint, out, fast_config(n=3))
    assert len(list(tmp_path.glob("generated.before-*.ledger.jsonl"))) == 3
    assert lines(tmp_path / f"generated.{tag}.jsonl") == first.records  # the first set-aside, untouched
    # A batch planned for one version of the spec is not booked under another.
    batch_in = generate.write_batch_file(spec, "gpt-4o-mini", tmp_path / "batch.jsonl", fast_config(n=1))
    request = lines(batch_in)[0]
    row = {"custom_id": request["custom_id"], "error": None,
           "response": {"status_code": 200, "body": completion(request["body"], good_content(request["body"]))}}
    (tmp_path / "batch_out.jsonl").write_text(json.dumps(row) + "\n")
    capsys.readouterr()
    late = generate.read_batch_output(edited, "gpt-4o-mini", tmp_path / "batch_out.jsonl", out, fast_config(n=4))
    assert late.report["accepted_this_run"] == 0 and "1 answers in batch_out.jsonl were asked for an earlier" \
        in capsys.readouterr().out


def test_the_data_writer_is_told_the_persona_is_honest_about_itself(spec):
    """A persona is a voice, not a disguise: the generated conversations must not teach it to deny
    being an AI when asked sincerely, nor to claim actions no tool performed."""
    system = teacher.system_message(spec, teacher.item_at(spec, 0))
    assert "sincerely asks whether they are talking to a person" in system and "that it is an AI" in system
    assert "never says it sent, saved, booked" in system
    assert "never mentions being an AI" not in system


# --------------------------------------------------------------------------- the real llama.cpp server


@pytest.mark.slow  # two generation-sized prompts on the 135M model: 10 s on an idle 2-core box, 30+ s on a busy one
def test_real_llamacpp_server_returns_schema_valid_records(spec, tmp_path):
    """The openai client over HTTP to llama.cpp with the embedded GGUF: every reply parses into
    the schema's turns and the dataset's record rules (a 135M model's content may still fail
    the quality filters, which is the point of having them)."""
    out = tmp_path / "generated.jsonl"
    config = generate.GenerateConfig.smoke(min_words=1)
    with llm.local_server() as endpoint:
        result = generate.run(spec, endpoint, out, config, against=[])
    report = result.report
    assert report["requests"] >= 2 and report["endpoint"]["dialect"] == "json_object"
    quality = {"placeholder", "too_short", "generic_voice", "reply_too_long", "near_duplicate"}
    assert set(report["rejected_this_run"]) <= quality, report["rejected_this_run"]
    assert not report["failed_this_run"]
    assert report["accepted_this_run"] + sum(report["rejected_this_run"].values()) == 2
    for record in dataset.load_records(out, persona="taskmaster") if out.stat().st_size else []:
        assert record["source"] == "llamacpp:SmolLM2-135M-Instruct.Q4_1" and len(record["messages"]) == 2


def test_failed_requests_are_asked_again_on_the_next_run(spec, serve, tmp_path):
    server, url = serve(fault_rate=0.5, faults=("server_error",), seed=2)
    endpoint = llm.Endpoint.compatible(url, "fake")
    out = tmp_path / "generated.jsonl"
    first = generate.run(spec, endpoint, out, fast_config(n=10, max_items=10, retry=llm.RetryPolicy(max_attempts=1)))
    failed = {r["id"] for r in lines(generate.ledger_path(out)) if r["status"] == "failed"}
    assert failed and first.accepted == 10 - len(failed)
    assert first.report["stopped"].startswith("tried all 10 plan items")
    second = generate.run(spec, endpoint, out, fast_config(n=10, max_items=10))
    assert second.accepted == 10 and {r["id"] for r in second.records} >= failed
