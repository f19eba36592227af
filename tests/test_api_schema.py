"""What a fresh API client reads in the schema is what the app accepts:
every value the schema lists for an input works, and a value that does not
fit the other inputs is refused with a message naming the ones that do."""

from __future__ import annotations

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from inference.registry import GENERATE, REGISTRY, by_task
from ui import benchmarks

GENERATORS = by_task(GENERATE)


@pytest.fixture(scope="module")
def fresh(app_url):
    """A client that has done nothing on the page: it has only the schema."""
    return Client(app_url, verbose=False)


def parameters(client, endpoint: str) -> dict[str, dict]:
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"][endpoint]
    return {p["parameter_name"]: p for p in api["parameters"]}


def listed(param: dict) -> list:
    """The values the schema lists for a choice input."""
    return param["type"]["enum"]


# -- benchmark_metric: the metric input depends on the table -------------------
def test_the_schema_lists_every_metric_of_every_table(fresh):
    metrics = listed(parameters(fresh, "/benchmark_metric")["metric"])
    for _, name in benchmarks.COMPARISONS:
        assert set(benchmarks.metrics(name)) <= set(metrics), name
    assert benchmarks.ALL in metrics


@pytest.mark.parametrize("name", [name for _, name in benchmarks.COMPARISONS])
def test_every_metric_of_a_table_is_callable_from_a_fresh_client(fresh, name):
    for metric in [benchmarks.ALL] + benchmarks.metrics(name):
        _, rows = fresh.predict(name, metric, "Best first", api_name="/benchmark_metric")
        assert len(rows["data"]) == len(benchmarks.read(name)), (name, metric)


def test_the_imdb_accuracies_sort_best_first(fresh):
    _, rows = fresh.predict("finetuning", "IMDB", "Best first", api_name="/benchmark_metric")
    column = rows["headers"].index("IMDB")
    values = [float(r[column]) for r in rows["data"]]
    assert values == sorted(values, reverse=True)


def test_a_metric_the_table_lacks_is_refused_naming_the_tables_metrics(fresh):
    with pytest.raises(AppError) as refused:
        fresh.predict("harness-en", "IMDB", "Best first", api_name="/benchmark_metric")
    message = str(refused.value)
    assert "has no metric 'IMDB'" in message
    assert all(m in message for m in benchmarks.metrics("harness-en"))


# -- generate: how many completions ------------------------------------------------
def test_completions_is_declared_a_whole_number_and_two_gives_two(fresh):
    completions = parameters(fresh, "/generate")["completions"]
    assert completions["python_type"]["type"] == "int"
    assert completions["type"]["type"] == "integer"
    first, second, third, fourth, *_ = fresh.predict(
        "A lhama", completions=2, max_new_tokens=4, api_name="/generate")
    assert first and second and third == fourth == ""


# -- generate and perplexity: the revision input depends on the model ---------------
@pytest.mark.parametrize("endpoint", ["/generate", "/perplexity"])
def test_the_schema_lists_every_checkpoint_of_every_model(fresh, endpoint):
    params = parameters(fresh, endpoint)
    assert set(listed(params["model_key"])) == {s.key for s in GENERATORS}
    assert set(listed(params["revision"])) == {r for s in GENERATORS for r in s.revisions}


@pytest.mark.parametrize("key, revision", [(s.key, r) for s in GENERATORS for r in s.revisions])
def test_every_checkpoint_of_every_model_is_callable_from_a_fresh_client(fresh, key, revision):
    *texts, figures, _, run = fresh.predict("A lhama", key, revision, max_new_tokens=2,
                                            api_name="/generate")
    assert texts[0] and "prompt tokens" in figures
    assert (run["model"], run["revision"]) == (key, revision)


def test_a_checkpoint_the_model_lacks_is_refused_naming_its_checkpoints(fresh):
    with pytest.raises(AppError) as refused:
        fresh.predict("A lhama", "ttl-160m", "step1200000", api_name="/generate")
    message = str(refused.value)
    assert "no checkpoint 'step1200000'" in message
    assert "step400000" in message and "step500000" not in message


def test_a_checkpoint_no_model_has_is_refused_naming_the_choices(fresh):
    with pytest.raises(AppError) as refused:
        fresh.predict("Um texto.", "ttl-460m", "step1300000", api_name="/perplexity")
    assert "step1300000" in str(refused.value) and "step1200000" in str(refused.value)


# -- the page still offers only what fits -------------------------------------------
@pytest.mark.browser
def test_the_page_offers_only_the_chosen_models_checkpoints_and_tables_metrics(page):
    def offers(name: str, expected: list[str]) -> bool:
        """The dropdown lists `expected`, once the page has narrowed it."""
        for _ in range(50):
            page.get_by_role("combobox", name=name, exact=True).click()
            shown = [o.replace("✓", "").strip() for o in page.get_by_role("option").all_inner_texts()]
            page.mouse.click(1, 1)   # closes it
            if shown == expected:
                return True
            page.wait_for_timeout(100)
        return False

    assert offers("Checkpoint (training step)", list(REGISTRY["ttl-160m"].revisions))
    page.get_by_role("combobox", name="Model", exact=True).click()
    page.get_by_role("option", name="TeenyTinyLlama-460m").click()
    page.mouse.click(1, 1)
    assert offers("Checkpoint (training step)", list(REGISTRY["ttl-460m"].revisions))

    page.get_by_role("tab", name="Benchmarks").click()
    first = benchmarks.COMPARISONS[0][1]
    assert offers("Metric", [benchmarks.ALL] + benchmarks.metrics(first))
