"""The MLflow pyfunc wrapper: input shapes, sampling params, and a real save -> load -> predict round trip.

The tiny tokenizer and model come from tests/factories.py (seconds).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from tests.factories import make_model_dir, train_tiny_tokenizer
from tinyllama_model import TinyLlama
from tinyllama_model.generate import generate_text
from tinyllama_model.pyfunc import (
    MODEL_DIR_ARTIFACT,
    SAMPLING_PARAMS,
    TinyLlamaPyfunc,
    prompts_from_input,
    sampling_kwargs,
    signature,
    write_model_code,
)
from tinyllama_model.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("pyfunc")
    return make_model_dir(tmp / "model", train_tiny_tokenizer(tmp))


@pytest.fixture(scope="module")
def saved(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model saved as `register` logs it: from code, with the model directory as its one artifact."""
    tmp = tmp_path_factory.mktemp("saved")
    mlflow.pyfunc.save_model(
        tmp / "pyfunc",
        python_model=str(write_model_code(tmp)),
        artifacts={MODEL_DIR_ARTIFACT: str(model_dir)},
        signature=signature(max_new_tokens=6),
        input_example=(["The future of AI is"], {"max_new_tokens": 2}),
    )
    return tmp / "pyfunc"


@pytest.fixture(scope="module")
def loaded(saved: Path) -> mlflow.pyfunc.PyFuncModel:
    return mlflow.pyfunc.load_model(str(saved))


# -- inputs and params ----------------------------------------------------------------------------------


def test_prompts_from_input_accepts_what_callers_send() -> None:
    expected = ["a", "b"]
    assert prompts_from_input("a") == ["a"]
    assert prompts_from_input(["a", "b"]) == expected
    assert prompts_from_input(("a", "b")) == expected
    assert prompts_from_input(np.array(["a", "b"])) == expected
    assert prompts_from_input(pd.DataFrame({"other": [1, 2], "prompt": ["a", "b"]})) == expected
    assert prompts_from_input(pd.DataFrame({0: ["a", "b"]})) == expected  # REST {"inputs": [...]}
    assert prompts_from_input(pd.DataFrame({"text": ["a", "b"]})) == expected  # first column
    assert prompts_from_input({"prompt": ["a", "b"]}) == expected
    assert prompts_from_input({"prompt": "a"}) == ["a"]
    assert prompts_from_input([["a"], ["b"]]) == expected  # rows of a one-column frame as lists


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ([1, 2], "must be a string"),
        (pd.DataFrame(index=[0, 1]), "no columns"),
        ({}, "empty input"),
        (object(), "cannot read prompts"),
    ],
)
def test_prompts_from_input_rejects_what_is_not_text(bad: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        prompts_from_input(bad)


def test_sampling_kwargs_maps_sentinels_to_off() -> None:
    defaults = sampling_kwargs(None)
    assert defaults["top_p"] is None and defaults["seed"] is None  # 1.0 and -1 mean "off"
    assert defaults["top_k"] == SAMPLING_PARAMS["top_k"][1]
    custom = sampling_kwargs({"top_k": 0, "top_p": 0.9, "seed": 7, "temperature": 0, "max_new_tokens": 3})
    assert custom["top_k"] is None and custom["top_p"] == 0.9 and custom["seed"] == 7
    assert custom["temperature"] == 0.0 and custom["max_new_tokens"] == 3
    assert defaults["model_only"] is False and sampling_kwargs({"model_only": True})["model_only"] is True
    with pytest.raises(ValueError, match="unknown params"):
        sampling_kwargs({"temprature": 0.5})
    with pytest.raises(ValueError, match="max_new_tokens"):
        sampling_kwargs({"max_new_tokens": 0})


def test_signature_is_text_to_text_with_overridable_param_defaults() -> None:
    sig = signature(temperature=0.0, max_new_tokens=12)
    params = {p.name: p.default for p in sig.params.params}
    assert params["temperature"] == 0.0 and params["max_new_tokens"] == 12
    assert set(params) == set(SAMPLING_PARAMS)
    assert sig.inputs.input_types() == [mlflow.types.DataType.string]
    with pytest.raises(ValueError, match="unknown sampling params"):
        signature(beam_width=4)


# -- the saved model ------------------------------------------------------------------------------------


def test_saved_model_holds_code_and_safetensors_not_a_pickle(
    saved: Path, loaded: mlflow.pyfunc.PyFuncModel
) -> None:
    assert loaded.metadata.flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    files = {p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pt", ".bin"))]
    assert {
        "artifacts/model/config.json",
        "artifacts/model/model.safetensors",
        "artifacts/model/tokenizer.model",
    } <= files


def test_predict_matches_generate_text_on_the_same_directory(
    loaded: mlflow.pyfunc.PyFuncModel, model_dir: Path
) -> None:
    prompts = ["The future of AI is", "Python"]
    got = loaded.predict(prompts, params={"temperature": 0.0, "max_new_tokens": 6})
    model = TinyLlama.from_pretrained(model_dir).eval()
    want = generate_text(model, Tokenizer(model_dir), prompts, max_new_tokens=6, temperature=0.0)
    assert got == want
    assert all(isinstance(t, str) and t for t in got)


def test_predict_gives_one_output_per_prompt_whatever_the_input_shape(
    loaded: mlflow.pyfunc.PyFuncModel,
) -> None:
    greedy = {"temperature": 0.0, "max_new_tokens": 4}
    from_list = loaded.predict(["a", "b", "c"], params=greedy)
    from_frame = loaded.predict(pd.DataFrame({"prompt": ["a", "b", "c"]}), params=greedy)
    assert from_list == from_frame and len(from_list) == 3


def test_signature_defaults_reach_predict(loaded: mlflow.pyfunc.PyFuncModel, model_dir: Path) -> None:
    got = loaded.predict(["The future"], params={"temperature": 0.0})  # max_new_tokens: the logged 6
    model = TinyLlama.from_pretrained(model_dir).eval()
    assert got == generate_text(
        model, Tokenizer(model_dir), ["The future"], max_new_tokens=6, temperature=0.0
    )
    assert got != generate_text(
        model, Tokenizer(model_dir), ["The future"], max_new_tokens=7, temperature=0.0
    )


def test_seed_makes_sampling_reproducible(loaded: mlflow.pyfunc.PyFuncModel) -> None:
    params = {"temperature": 1.0, "top_k": 0, "max_new_tokens": 20}
    first = loaded.predict(["x"], params={**params, "seed": 3})
    assert loaded.predict(["x"], params={**params, "seed": 3}) == first
    others = {tuple(loaded.predict(["x"], params={**params, "seed": s})) for s in range(4, 9)}
    assert others != {tuple(first)}  # a different seed draws differently (5 tries: not all identical)


def test_load_refuses_a_tokenizer_bigger_than_the_model(tmp_path: Path, model_dir: Path) -> None:
    small = make_model_dir(tmp_path / "small", model_dir / "tokenizer.model", vocab_size=300)
    with pytest.raises(ValueError, match="different trainings"):
        TinyLlamaPyfunc().load_dir(small)


def test_predict_before_load_says_how_to_load() -> None:
    with pytest.raises(RuntimeError, match="load_model"):
        TinyLlamaPyfunc().predict(None, ["a"])


def test_predict_refuses_a_prompt_past_the_bound_as_the_callers_error(
    loaded: mlflow.pyfunc.PyFuncModel,
) -> None:
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match=r"tokens is longer than the 16,384 a model accepts") as err:
        loaded.predict(["The for statement " * 16_384], params={"max_new_tokens": 2})
    assert err.value.get_http_status_code() == 400
