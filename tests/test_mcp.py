"""The MCP tools, driven by the `mcp` package's client as an agent would:
the tools are listed with descriptions an agent can read, and classify and
generate answer. UI-only events are not tools."""

from __future__ import annotations

import asyncio
import concurrent.futures

import pytest

EXPECTED = {"generate", "perplexity", "chat", "classify", "classify_batch", "perplexity_figure",
            "benchmark_table", "benchmark_metric", "measure_here",
            "finetune"}
EXPECTED |= {"compare", "timeline", "blind_match", "vote", "leaderboard"}   # the Compare tab


def session_call(url: str, fn):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async def run():
        async with streamablehttp_client(url) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await fn(session)
    # On a thread of its own: the browser tests' client keeps an event loop
    # running on the main thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


@pytest.fixture(scope="module")
def mcp_url(app_url):
    return app_url + "gradio_api/mcp/"


def test_tools_are_listed_with_their_descriptions(mcp_url):
    tools = session_call(mcp_url, lambda s: s.list_tools()).tools
    by_name = {t.name: t for t in tools}
    assert set(by_name) == EXPECTED   # no private UI event became a tool
    for tool in tools:
        assert len(tool.description) > 40, tool.name
        props = tool.inputSchema["properties"]
        assert all(p.get("description") for p in props.values()), tool.name
    assert "TeenyTinyLlama" in by_name["generate"].description
    assert "ttl-160m-imdb" in by_name["classify"].inputSchema["properties"]["model_key"]["description"]


def test_classify_and_generate_answer_through_mcp(mcp_url):
    async def calls(s):
        labels = await s.call_tool("classify", {"text": "Que filme bom!", "model_key": "ttl-160m-imdb",
                                                "second_text": ""})
        text = await s.call_tool("generate", {
            "text": "A lhama é", "model_key": "ttl-160m", "revision": "main", "temperature": 0.2,
            "top_k": 20, "top_p": 0.2, "repetition_penalty": 1.2, "max_new_tokens": 12,
            "greedy": True, "seed": -1, "completions": 1})
        return labels, text
    labels, text = session_call(mcp_url, calls)
    assert not labels.isError and ("POSITIVE" in str(labels.content) or "NEGATIVE" in str(labels.content))
    assert not text.isError and "prompt tokens" in str(text.content)
