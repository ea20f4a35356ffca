"""Sampling from a TinyLlama: the decode loop with a KV cache, the sampling rules, text helpers.

The loop knows token ids only; `generate_text` / `stream_text` at the bottom add the tokenizer.

Rules (the same with and without the cache, so both give the same tokens):
- Prompts are encoded WITHOUT BOS: the training stream separates documents with EOS (id 1) and never
  contains BOS (id 3), so BOS would be a token the model has never seen. An empty text prompt becomes
  [EOS], i.e. "a new document starts here".
- Context window: the model sees at most `max_seq_len` of the most recent tokens. A longer prompt
  keeps its last `max_seq_len` tokens; a prompt past `MAX_PROMPT_TOKENS` is refused. When the window is
  full, it is cut to its last `max_seq_len // 2` tokens and the cache is rebuilt from them, so
  generation can run past the context window at the cost of one prefill every `max_seq_len // 2` tokens
  (not one per token).
- Several prompts run as one batch, left-padded: padding is masked out and rotary positions count
  from each row's first real token, so a row gets the tokens it would get alone (exactly so until the
  window first slides: it slides for all rows together, when the longest row fills it).
- A row stops at EOS (the EOS is not part of the returned ids); the batch stops when all rows have.
- A model with a document cache (doc_cache.py) or corpus n-grams (corpus_ngrams.py) predicts with them:
  they read each row's whole prompt (also what the window cut) and every token generated, and the
  mixture's log-probabilities are what the sampling rules below see. `model_only=True` samples from
  the network alone.
- A model with `adapt_lr` (adaptation.py) learns from what it reads: the prompt, then every
  `max_seq_len // 2` tokens what it has generated, on its own copy of the weights, as scoring does.
  Rows of a batch then run one by one, since each has its own weights. `model_only=True` leaves it out.
  A fitted share of the unadapted network (`unadapted_share`) runs beside it on its own KV cache.
- A model with a neural cache (neural_cache.py) keeps the state that predicted each token of the
  document: the prompt's as scoring computes them (`Adapter.document_states`), then the decode loop's.
  It reads through an adapter too, one that never learns when the model has no `adapt_lr`.
- Sampling order as in Hugging Face: repetition penalty -> temperature (0 = greedy) -> top-k -> top-p.
  Randomness comes from a local `torch.Generator` seeded with `seed`, never the global RNG.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from tinyllama_model.decode_window import append, left_pad, window_logits
from tinyllama_model.mixture import registry
from tinyllama_model.mixture.adaptation import Adapter
from tinyllama_model.mixture.expert import mix_proposal
from tinyllama_model.tokenizer import EOS_ID, PAD_ID

if TYPE_CHECKING:
    from tinyllama_model.tokenizer import Tokenizer

# the longest prompt accepted: the document cache, the neural cache and adaptation read all of it, so
# its cost (memory and the time to first token) grows with it, not with the context window
MAX_PROMPT_TOKENS = 16_384


class Decoder(Protocol):
    """What the decode loop needs of a model; `TinyLlama` is one.

    A protocol rather than the class, so this module never imports model.py (model.py imports this one
    for `TinyLlama.generate`).
    """

    config: Any  # vocab_size and max_seq_len are read
    rope_cos: torch.Tensor  # on the model's device
    training: bool

    def __call__(self, idx: torch.Tensor, *, last_only: bool = False) -> tuple[torch.Tensor, Any]: ...

    def forward_cached(self, idx: torch.Tensor, cache: Any) -> torch.Tensor: ...

    def new_cache(self, batch_size: int, pad: torch.Tensor | None = None) -> Any: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0  # 0 = greedy (argmax)
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float | None = None  # keep the smallest set of tokens whose probability reaches p (nucleus)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the row (CTRL / HF rule)
    eos_id: int | None = EOS_ID  # stop a row at this id; None never stops early
    seed: int | None = None  # reproducible sampling; None draws a fresh seed
    model_only: bool = False  # True: the trained network alone (no experts, no dynamic evaluation)

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 means greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k={self.top_k} must be >= 1 or None")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] or None")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty={self.repetition_penalty} must be > 0 (1 = off)")

    def generator(self, device: torch.device) -> torch.Generator | None:
        if self.temperature == 0:
            return None
        g = torch.Generator(device=device)
        if self.seed is None:
            g.seed()  # fresh entropy, still without touching the global RNG
        else:
            g.manual_seed(self.seed)
        return g


def sample_next(
    logits: torch.Tensor,
    s: Sampling,
    generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick one token per row from logits (B, V); `seen` (B, V) bool marks tokens already in each row."""
    logits = logits.float()
    if s.repetition_penalty != 1.0 and seen is not None:
        penalised = torch.where(logits > 0, logits / s.repetition_penalty, logits * s.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if s.temperature == 0:
        return logits.argmax(dim=-1)  # (B,)
    logits = logits / s.temperature
    if s.top_k is not None and s.top_k < logits.size(-1):
        kth = torch.topk(logits, s.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p is not None and s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the first one always stays)
        drop = probs.cumsum(dim=-1) - probs >= s.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


def _check_request(prompts: Sequence[Sequence[int]], max_new_tokens: int, vocab: int) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (use [EOS] to start a new document)")
    if (longest := max(len(p) for p in prompts)) > MAX_PROMPT_TOKENS:
        raise ValueError(
            f"a prompt of {longest:,} tokens is longer than the {MAX_PROMPT_TOKENS:,} a model accepts (the "
            "experts read the whole prompt, not just the context window); shorten it to its last part"
        )
    if any(not 0 <= t < vocab for p in prompts for t in p):
        raise ValueError(f"prompt ids must be in [0, {vocab}) (the model's vocab_size)")


def _seen_tokens(prompts: Sequence[Sequence[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """(B, V) bool: the tokens each prompt already holds (what the repetition penalty applies to)."""
    seen = torch.zeros(len(prompts), vocab, dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        seen[i, torch.tensor(p, device=device)] = True
    return seen


class _Experts:
    """What the model predicts with besides its weights, in the registry's order (`registry.EXPERTS`):
    a `Follower` per expert the model has, each following every row's tokens (the whole prompt, then what
    is generated). `for_model` gives None to a model with none, so its decode loop does no bookkeeping
    for them. Experts that read the network's states (the unadapted share, the neural cache) take part
    only with an `adapter` (adaptation.py), which exists only for a row alone."""

    def __init__(
        self,
        model: Decoder,
        prompts: Sequence[Sequence[int]],
        adapter: Adapter | None,
        use_cache: bool = True,
    ):
        self.followers = []  # (follower, its weights by bucket), in chain order
        for expert, params in registry.active(model):
            follower = expert.follower(params, model, prompts, adapter, use_cache)
            if follower is not None:
                self.followers.append((follower, expert.weights(model.config)))

    @classmethod
    def for_model(
        cls, model: Decoder, prompts: Sequence[Sequence[int]], adapter: Adapter | None, use_cache: bool
    ) -> _Experts | None:
        experts = cls(model, prompts, adapter, use_cache)
        return experts if experts.followers else None

    def observe(self, tokens: list[int], states: torch.Tensor | None) -> None:
        """The tokens just sampled, one per row, and the states (B, dim) that predicted them."""
        for follower, _ in self.followers:
            follower.observe(tokens, states)

    def mix(self, logits: torch.Tensor, states: torch.Tensor | None) -> torch.Tensor:
        """Log-probabilities (B, V) of the mixture: one softmax, each expert's proposal mixed in, one log;
        `states` (B, dim) predict this step."""
        probs = logits.float().softmax(dim=-1)
        for row in range(probs.size(0)):
            for follower, weights in self.followers:
                proposal = follower.propose(row, states)
                if proposal is not None:
                    mix_proposal(probs[row], float(weights[proposal.bucket]), proposal)
        return probs.log()


def _last_states(net: Decoder, rows: int) -> torch.Tensor | None:
    """The final states (rows, dim) of the forward that gave the latest logits (a recording network)."""
    states = getattr(net, "states", None)
    return None if states is None else states.reshape(rows, -1)


def _one_row_at_a_time(
    model: Decoder, prompts: Sequence[Sequence[int]], max_new_tokens: int, s: Sampling, use_cache: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`decode_steps` of a batch whose rows each adapt their own weights: every row alone, then the
    steps yielded together (a row that has ended yields PAD, inactive)."""
    rows = [list(decode_steps(model, [p], max_new_tokens, s, use_cache=use_cache)) for p in prompts]
    device = model.rope_cos.device
    pad, off = torch.full((1,), PAD_ID, device=device), torch.zeros(1, dtype=torch.bool, device=device)
    for step in range(max(map(len, rows))):
        steps = [row[step] if step < len(row) else (pad, off) for row in rows]
        yield torch.cat([t for t, _ in steps]), torch.cat([a for _, a in steps])


@torch.inference_mode()
def decode_steps(
    model: Decoder,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    s: Sampling,
    *,
    use_cache: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (tokens (B,), active (B,) bool) per step; a row's token counts only while it is active.

    A row turns inactive on the step after it produced EOS. `use_cache=False` recomputes the whole
    window with the plain training forward each step (row by row when padded): the reference the
    cached path must equal.
    """
    vocab, window_len = model.config.vocab_size, model.config.max_seq_len
    _check_request(prompts, max_new_tokens, vocab)
    if max_new_tokens == 0:
        return
    device, was_training = model.rope_cos.device, model.training
    model.eval()
    try:
        b = len(prompts)
        # only the repetition penalty reads it: without one, no (B, V) table and no update per token
        seen = _seen_tokens(prompts, vocab, device) if s.repetition_penalty != 1.0 else None
        window, pad = left_pad([p[-window_len:] for p in prompts], device)  # (B, W)
        generator = s.generator(device)
        active = torch.ones(b, dtype=torch.bool, device=device)
        reads = not s.model_only and registry.reads_documents(model)
        if b > 1 and reads:
            yield from _one_row_at_a_time(model, prompts, max_new_tokens, s, use_cache)  # own weights each
            return
        adapter = Adapter.for_model(model, prompts[0]) if reads else None
        net = model if adapter is None else adapter.net
        cache = net.new_cache(b, pad) if use_cache else None
        experts = None if s.model_only else _Experts.for_model(model, prompts, adapter, use_cache)
        logits = window_logits(net, window, pad, cache)
        for step in range(max_new_tokens):
            if experts is not None:
                logits = experts.mix(logits, _last_states(net, b))
            token = sample_next(logits, s, generator, seen)  # (B,)
            token = torch.where(active, token, torch.full_like(token, PAD_ID))
            yield token, active.clone()
            if s.eos_id is not None:
                active &= token != s.eos_id
            if step == max_new_tokens - 1 or not bool(active.any()):
                return
            if seen is not None:
                seen[torch.arange(b, device=device), token] = True
            if experts is not None:
                experts.observe(token.tolist(), _last_states(net, b))
            window, pad, slid = append(window, pad, token, window_len)
            relearned = adapter is not None and adapter.observe(int(token[0]))
            if relearned and use_cache:  # new weights: the cached keys and values are stale
                cache = net.new_cache(b, pad)
            if relearned or slid or cache is None:
                logits = window_logits(net, window, pad, cache)
            else:
                logits = net.forward_cached(token[:, None], cache)[:, -1]
    finally:
        model.train(was_training)


def generate_ids(
    model: Decoder,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    use_cache: bool = True,
    **sampling,
) -> list[list[int]]:
    """New token ids for each prompt (without the prompt, cut before EOS). `sampling`: `Sampling` fields."""
    s = Sampling(**sampling)
    out: list[list[int]] = [[] for _ in prompts]
    for token, active in decode_steps(model, prompts, max_new_tokens, s, use_cache=use_cache):
        for i, (t, a) in enumerate(zip(token.tolist(), active.tolist(), strict=True)):
            if a and t != s.eos_id:
                out[i].append(t)
    return out


def stream_ids(
    model: Decoder, prompt: Sequence[int], max_new_tokens: int, *, use_cache: bool = True, **sampling
) -> Iterator[int]:
    """Yield new token ids of one prompt as they are produced; stops before EOS."""
    s = Sampling(**sampling)
    for token, _ in decode_steps(model, [prompt], max_new_tokens, s, use_cache=use_cache):
        t = int(token[0])
        if t == s.eos_id:
            return
        yield t


def generate_tensor(model: Decoder, idx: torch.Tensor, max_new_tokens: int, **sampling) -> torch.Tensor:
    """nanoGPT-style: idx (B, T) -> (B, T + n), rows that ended keep their EOS and are PAD-filled after it."""
    if idx.dim() != 2:
        raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
    s = Sampling(**sampling)
    steps = [token for token, _ in decode_steps(model, idx.tolist(), max_new_tokens, s)]
    if not steps:
        return idx
    return torch.cat([idx, torch.stack(steps, dim=1).to(idx.device)], dim=1)


# -- text ---------------------------------------------------------------------------------------------


def _encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    return tokenizer.encode(prompt, bos=False) or [EOS_ID]


def generate_text(
    model: Decoder, tokenizer: Tokenizer, prompts: list[str], max_new_tokens: int = 200, **sampling
) -> list[str]:
    """The continuation (without the prompt) of each prompt, generated as one batch."""
    ids = generate_ids(model, [_encode_prompt(tokenizer, p) for p in prompts], max_new_tokens, **sampling)
    return [tokenizer.decode(row) for row in ids]


def stream_text(
    model: Decoder, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 200, **sampling
) -> Iterator[str]:
    """Yield pieces of the continuation as they are produced; joined they equal `generate_text`'s."""
    ids = stream_ids(model, _encode_prompt(tokenizer, prompt), max_new_tokens, **sampling)
    yield from tokenizer.stream_decode(ids)
