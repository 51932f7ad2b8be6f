"""`SteerConfig`: every setting that changes what STEER generates, validated once, serialisable.

The decoding rule (STEER, arXiv 2308.07645) per token, with log-probs ℓ:

    paper form:  s = (1+γ)·ℓ_FT(c) − γ·ℓ_B(c) − η·ℓ_FT(N)
    cfg form:    s = (1+γ+η)·ℓ_FT(c) − γ·ℓ_B(c) − η·ℓ_FT(N)      (HF `guidance_scale` = 1+η)

Both are weighted sums of branch log-probs; `branch_weights` produces the weights and
`steer_plugins.core.combine.combine` applies them. Presets (`SteerConfig.preset(name)`) only set fields.

**Defaults are not the paper's.** The product default is γ 0.2, η 0.8, head mask α 0.05,
`whole_words` (steering picks words, the expert spells them) with the spelling floor
`spelling_min_p` 0.5 (the expert spells only with pieces at least half as likely as its best token),
`known_words` (a steered row writes only words of wordfreq's English list, the pool's real examples
or the prompt; `steer_plugins.core.lexicon`), and `negatives_from="synthetic"` (negatives are the
run's own outputs, topped up with real examples while fewer than K exist). In the quality study
(docs/quality.md, n = 200, 3 seeds) the paper's γ 0.2 η 0.6 invented 8.8 % of its words against
0.5 % for plain sampling; this setting is the most diverse STEER setting measured that meets the
whole fidelity rule (session 12; numbers in docs/quality.md). With real negatives (the paper's pool)
the guards at γ 0.2 η 0.4 already lose centroid cosine (0.764): they push away from the data the
output should resemble.
`SteerConfig.preset("paper")` is the paper's exact rule, for reproductions.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ADDED_FIELDS_OFF",
    "DEFAULT_GAMMA",
    "DEFAULT_ETA",
    "DEFAULT_ALPHA",
    "DEFAULT_WHOLE_WORDS",
    "DEFAULT_SPELLING_MIN_P",
    "DEFAULT_KNOWN_WORDS",
    "DEFAULT_NEGATIVES_FROM",
    "DEFAULT_NUM_NEGATIVES",
    "DEFAULT_TOP_K",
    "DEFAULT_MAX_NEW_TOKENS",
    "DEFAULT_NEGATIVE_MAX_TOKENS",
    "MAX_SEED",
    "SteerConfig",
    "BranchWeights",
    "register_preset",
    "PRESETS",
]

DEFAULT_GAMMA = 0.2
DEFAULT_ETA = 0.8
DEFAULT_ALPHA = 0.05
DEFAULT_WHOLE_WORDS = True
DEFAULT_SPELLING_MIN_P = 0.5
DEFAULT_KNOWN_WORDS = True
DEFAULT_NEGATIVES_FROM: Literal["pool", "synthetic"] = "synthetic"
DEFAULT_NUM_NEGATIVES = 10
DEFAULT_TOP_K = 10
DEFAULT_MAX_NEW_TOKENS = 100
DEFAULT_NEGATIVE_MAX_TOKENS = 512
#: Largest γ or η accepted: far beyond any useful setting, small enough that weights times log-probs
#: stay finite in fp32.
MAX_WEIGHT = 1e4
#: Largest seed a torch generator and `random.Random` both accept without overflow.
MAX_SEED = 2**63 - 1


class BranchWeights(BaseModel):
    """Weights wᵢ of the three branch kinds in s = Σ wᵢ·ℓᵢ (negative weight is split over K rows
    when `negative_form="per_example"`)."""

    model_config = ConfigDict(frozen=True)
    expert: float
    base: float
    negative: float


class SteerConfig(BaseModel):
    """Settings of one STEER generation. Any field can be overridden per call.

    Example:
        >>> cfg = SteerConfig(gamma=0.2, eta=0.6, max_new_tokens=40, stop=["?"])
        >>> cfg.branch_weights()
        BranchWeights(expert=1.2, base=-0.2, negative=-0.6)
    """

    # strict: "0.5" or True for a float, 2.7 or True for an int are errors, never silently coerced
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)

    gamma: float = Field(DEFAULT_GAMMA, description="γ, contrastive expert guidance (expert vs base). >= 0.")
    eta: float = Field(DEFAULT_ETA, description="η, negative prompting weight. >= 0.")
    num_negatives: int = Field(DEFAULT_NUM_NEGATIVES, description="K, negatives drawn per generated example.")
    negative_form: Literal["concat", "per_example"] = Field(
        "concat",
        description="'concat': the paper's one context of K examples joined by spaces; "
        "'per_example': one branch per negative, log-probs averaged.",
    )
    negatives_from: Literal["pool", "synthetic"] = Field(
        DEFAULT_NEGATIVES_FROM,
        description="'synthetic' (default): K drawn from the outputs so far, topped up with real examples "
        "while fewer than K exist, so steering moves away from what was generated rather than from the "
        "real data; 'pool': K drawn uniformly from the real examples and the outputs so far (the paper). "
        "Measured in docs/quality.md (n = 200, 3 seeds).",
    )
    share_negatives: bool = Field(
        False,
        description="Draw the K negatives once per generate call (one chunk of `steer generate`) and give "
        "every prompt of the call that context, so its prefill runs once instead of once per prompt. "
        "Opt-in, not the paper's per-example draw; speed and quality in docs/benchmarks.md and docs/quality.md.",
    )
    form: Literal["paper", "cfg"] = Field("paper", description="Combination form (see module docstring).")
    alpha: float | None = Field(
        DEFAULT_ALPHA,
        description="Plausibility head mask: keep tokens with p_FT >= alpha * max p_FT (Li et al. 2022). "
        "None = off (the paper). Like whole_words, it guards steering only: gamma = eta = 0 samples the "
        "expert as it is.",
    )
    whole_words: bool = Field(
        DEFAULT_WHOLE_WORDS,
        description="Steering picks words, the expert spells them: the expert alone decides whether the "
        "current word goes on and with which of its top-k pieces; the steered scores only share out the "
        "expert's probability of starting something new. False = every token steered (the paper).",
    )
    spelling_min_p: float | None = Field(
        DEFAULT_SPELLING_MIN_P,
        description="With whole_words: a word goes on only with a piece the expert gives at least this "
        "share of its most likely token's probability, so the expert spells with its confident pieces. "
        "Invented words are mostly spelled with a piece outside the expert's top two, real words almost "
        "never (docs/quality.md). None = the sampler's top-k alone. Like alpha, it guards steering only.",
    )
    known_words: bool = Field(
        DEFAULT_KNOWN_WORDS,
        description="A steered row writes only known words: English (wordfreq's list, as the invented-word "
        "rate uses) or words of the pool's real examples and the prompt; every word it finishes must be one "
        "and the word it is in must start one (steer_plugins.core.lexicon). Needs wordfreq. Like alpha, it "
        "guards steering only.",
    )
    temperature: float = Field(1.0, description="Sampling temperature; 0 = greedy.")
    top_k: int | None = Field(DEFAULT_TOP_K, description="Keep the k best tokens; None = off.")
    top_p: float | None = Field(None, description="Nucleus filter; None = off.")
    min_p: float | None = Field(None, description="Drop tokens below min_p * max prob; None = off.")
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, description="Tokens to generate at most.")
    stop: list[str] = Field(default_factory=list, description="Stop strings; the text is cut before them.")
    stop_token_ids: list[int] = Field(
        default_factory=list, description="Extra stop token ids (EOS is implied)."
    )
    ignore_eos: bool = Field(False, description="Keep generating past EOS (benchmarks force full length).")
    seed: int | None = Field(None, description="Seed for sampling and negative draws; None = fresh entropy.")
    negative_max_tokens: int | None = Field(
        DEFAULT_NEGATIVE_MAX_TOKENS,
        description="Token budget of one negative context; whole examples are dropped to fit. None = "
        "only the model's context window bounds it.",
    )
    negative_separator: str = Field(" ", description="Joins negatives into one context (paper: a space).")

    # ---- validation: every message names the field, the value and the fix ----
    @field_validator("gamma", "eta")
    @classmethod
    def _finite_non_negative(cls, v: float, info) -> float:
        if not math.isfinite(v) or not 0 <= v <= MAX_WEIGHT:
            raise ValueError(
                f"`{info.field_name}` must be a finite number >= 0 (at most {MAX_WEIGHT:g}), got {v!r}; the "
                f"paper sweeps 0.0-1.0 (defaults gamma={DEFAULT_GAMMA}, eta={DEFAULT_ETA})"
            )
        return float(v)

    @field_validator("num_negatives", "max_new_tokens")
    @classmethod
    def _positive_int(cls, v: int, info) -> int:
        if v < 1:
            hint = (
                "set eta=0 to switch negatives off" if info.field_name == "num_negatives" else "ask for >= 1"
            )
            raise ValueError(f"`{info.field_name}` must be >= 1, got {v}; {hint}")
        return v

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, v: int | None) -> int | None:
        if v is not None and v <= 0:
            raise ValueError(f"`top_k` must be a positive integer or None (off), got {v}; the paper uses 10")
        return v

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float) -> float:
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"`temperature` must be finite and >= 0 (0 = greedy), got {v!r}")
        return v

    @field_validator("top_p", "alpha", "spelling_min_p")
    @classmethod
    def _unit_interval(cls, v: float | None, info) -> float | None:
        if v is not None and not (0 < v <= 1):
            raise ValueError(f"`{info.field_name}` must be in (0, 1] or None (off), got {v!r}")
        return v

    @field_validator("min_p")
    @classmethod
    def _min_p(cls, v: float | None) -> float | None:
        if v is not None and not (0 <= v < 1):
            raise ValueError(f"`min_p` must be in [0, 1) or None (off), got {v!r}")
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int | None) -> int | None:
        if v is not None and not (0 <= v <= MAX_SEED):
            raise ValueError(f"`seed` must be in [0, 2**63 - 1] or None (fresh entropy), got {v}")
        return v

    @field_validator("negative_max_tokens")
    @classmethod
    def _budget(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(
                f"`negative_max_tokens` must be >= 1 or None, got {v}; set eta=0 to drop negatives"
            )
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: list[str]) -> list[str]:
        if any(not isinstance(s, str) or s == "" for s in v):
            raise ValueError(f"`stop` must be a list of non-empty strings, got {v!r}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _stop_as_str(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in ("stop", "stop_token_ids"):
                value = data.get(name)
                if isinstance(value, str) and name == "stop":
                    data = {**data, name: [value]}
                elif isinstance(value, tuple):
                    data = {**data, name: list(value)}
        return data

    # ---- derived values ----
    def branch_weights(self) -> BranchWeights:
        """The weights of the expert, base and negative branches for this config's `form`."""
        return _FORMS[self.form](self.gamma, self.eta)

    def merged(self, **overrides: Any) -> SteerConfig:
        """A validated copy with `overrides` applied; unknown names raise a `ValueError` naming them."""
        unknown = sorted(set(overrides) - set(type(self).model_fields))
        if unknown:
            raise ValueError(
                f"unknown SteerConfig field(s) {unknown}; valid fields: {sorted(type(self).model_fields)}"
            )
        if not overrides:
            return self
        return type(self).model_validate({**self.model_dump(), **overrides})

    def fingerprint(self) -> str:
        """A short stable hash of every field (for cache keys and model strings)."""
        fields = self.model_dump(mode="json")
        for name, off in ADDED_FIELDS_OFF.items():  # fields added later hash as before while left off
            if fields.get(name) == off:
                del fields[name]
        blob = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SteerConfig:
        """A config from a named preset (`steer`, `cfg`, `contrastive`, `expert`, or a registered one)."""
        if name not in PRESETS:
            raise ValueError(
                f"unknown preset {name!r}; known presets: {sorted(PRESETS)} (or register_preset)"
            )
        return cls.model_validate({**PRESETS[name], **overrides})


#: `SteerConfig` fields added after files were first fingerprinted, with their "off" value: left off,
#: they do not enter `fingerprint()` nor count as a difference against a file that predates them.
ADDED_FIELDS_OFF: dict[str, Any] = {
    "share_negatives": False,
    "negatives_from": "pool",
    "spelling_min_p": None,
    "known_words": False,
}


def _paper(gamma: float, eta: float) -> BranchWeights:
    return BranchWeights(expert=1.0 + gamma, base=-gamma, negative=-eta)


def _cfg(gamma: float, eta: float) -> BranchWeights:
    return BranchWeights(expert=1.0 + gamma + eta, base=-gamma, negative=-eta)


_FORMS: dict[str, Callable[[float, float], BranchWeights]] = {"paper": _paper, "cfg": _cfg}

PRESETS: dict[str, dict[str, Any]] = {}


def register_preset(name: str, **fields: Any) -> None:
    """Register a named preset: a set of `SteerConfig` fields (validated now)."""
    SteerConfig.model_validate(fields)
    PRESETS[name] = dict(fields)


# Built-in presets are registered exactly as a user's would be.
register_preset(
    "steer",
    gamma=DEFAULT_GAMMA,
    eta=DEFAULT_ETA,
    alpha=DEFAULT_ALPHA,
    whole_words=DEFAULT_WHOLE_WORDS,
    spelling_min_p=DEFAULT_SPELLING_MIN_P,
    known_words=DEFAULT_KNOWN_WORDS,
    negatives_from=DEFAULT_NEGATIVES_FROM,
    form="paper",
)
# The paper's exact rule for reproductions (STEER §1): γ 0.2, η 0.6, K 10, top-k 10, T 1, no head mask.
register_preset(
    "paper",
    gamma=0.2,
    eta=0.6,
    num_negatives=10,
    form="paper",
    alpha=None,
    whole_words=False,
    spelling_min_p=None,
    known_words=False,
    top_k=10,
    top_p=None,
    min_p=None,
    temperature=1.0,
    negative_form="concat",
    negatives_from="pool",
)
register_preset("expert", gamma=0.0, eta=0.0)
# Classifier-free guidance with the negative context as the unconditional prompt (guidance_scale = 1+eta).
register_preset("cfg", gamma=0.0, eta=0.5, form="cfg")
# Contrastive decoding (O'Brien & Lewis 2023 form: (1+β)ℓ_expert − βℓ_amateur with the α head mask);
# the base model plays the amateur.
register_preset("contrastive", gamma=1.0, eta=0.0, alpha=0.1, top_k=None, temperature=0.0)
