"""`prunerec serve --engine onnx` on a `prunerec export` folder: the same answers as evaluate
(TorchStepper); the L2 fallback uses the export's hf/ weights."""
import pytest

from tests.serve.conftest import USERS, Server, evaluate_rankings

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def export_dir(model_dir, tmp_path_factory):
    from prunerec.export.pipeline import ExportOptions, run_export

    out = tmp_path_factory.mktemp("serve-export") / "out"
    run_export(str(model_dir), out, ExportOptions(verify=False), say=lambda m: None)
    return out


@pytest.fixture(scope="module")
def server(export_dir, tmp_path_factory):
    srv = Server(["--model", export_dir / "onnx", "--engine", "onnx"], tmp_path_factory.mktemp("onnx") / "server.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_onnx_answers_equal_evaluate(server, model_dir, data_dir):
    ready = server.get("/ready").json()
    assert ready["engine"]["engine"] == "onnx" and ready["model"]["folder"].endswith("onnx")
    reference = evaluate_rankings(model_dir, data_dir)
    for user, history in USERS:
        body = server.post({"history": list(history), "k": 20}).json()
        assert [i["title"] for i in body["items"]] == reference[user], f"user {user}"
        assert body["engine"] == "onnx" and body["methods"]["trie"] == 20
    assert server.post({"history": [1, 99]}).status_code == 422
    assert server.stop() == 0


def test_onnx_fallback_uses_export_weights(export_dir, model_dir):
    from prunerec.serve.engines import Deadline, OnnxEngine, TorchEngine
    from prunerec.serve.model import load_serve_model
    from prunerec.serve.service import RecommendService
    from tests.serve.conftest import FewerResults

    onnx_sm = load_serve_model(export_dir, "onnx")  # OUT resolves to OUT/onnx, weights to OUT/hf
    assert onnx_sm.folder == export_dir / "onnx" and onnx_sm.torch_folder == export_dir / "hf"
    onnx, torch_engine = OnnxEngine(onnx_sm), TorchEngine(load_serve_model(model_dir, "torch"))
    try:
        prompt = onnx_sm.prompt([3, 4])
        assert onnx.generate(prompt, 12, Deadline()) == torch_engine.generate(prompt, 12, Deadline())
        got = RecommendService(onnx_sm, FewerResults(onnx, 2)).recommend([3, 4], 6)
        want = RecommendService(torch_engine.sm, FewerResults(torch_engine, 2)).recommend([3, 4], 6)
        assert got["fallback"] == "l2" and got["methods"] == {"trie": 2, "l2": 4}
        assert [i["title"] for i in got["items"]] == [i["title"] for i in want["items"]]
    finally:
        onnx.close()
        torch_engine.close()
