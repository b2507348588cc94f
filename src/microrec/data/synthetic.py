"""A deterministic synthetic micro-behavior log with planted signal (the default data set).

Each session is a chain of macro interactions. A hidden per-interaction *interest* flag
shapes the micro-behaviors (interested users open detail modules, cart, order and dwell
long) and the next product:
- after an interesting product, the user usually moves to one of its related products
  (same category);
- after an uninteresting one, the user usually returns to the most recent interesting
  product of the session (and is interested again), or jumps to a popular product.
Interest is drawn per interaction, not per product, so a model that sees only product ids
cannot tell which earlier product the user liked; activities and dwell reveal it. That is
the paper's claim, planted so that it can be measured.

Generation is vectorised over sessions (the only Python loop runs over positions).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from microrec.data import schema as S
from microrec.errors import ConfigError

GENERATOR_VERSION = 2  # bump on any change to the generated table
_SOURCE_PROBS = np.array([0.12, 0.16, 0.08, 0.09, 0.55])  # Home, ShopList, Sale, Cart, Search
_RELATED_WEIGHTS = np.array([0.6, 0.2, 0.1, 0.06, 0.04])  # one strong successor, a few weak
_N_RELATED = len(_RELATED_WEIGHTS)
_MAX_MACROS = 60


@dataclass(frozen=True)
class SyntheticSource:
    """Parameters of the generator; `load()` returns the canonical event table.

    Args:
        n_sessions: number of sessions (sequences).
        n_items: catalogue size.
        n_categories: number of product categories.
        mean_macros: mean number of macro interactions per session (at least 2 each).
        zipf: exponent of the product popularity law.
        p_interest: share of macro interactions the user is interested in.
        p_follow: after an interesting product, chance the next is one of its related ones.
        p_return: after an uninteresting product, chance of returning to the last liked one.
        module_views: mean repeated views of a detail module when interested.
        seed: generator seed; the same parameters always give the same table.
    """

    n_sessions: int = 20_000
    n_items: int = 2_000
    n_categories: int = 50
    mean_macros: float = 6.0
    zipf: float = 1.0
    p_interest: float = 0.4
    p_follow: float = 0.8
    p_return: float = 0.7
    module_views: float = 2.0
    seed: int = 0

    def __post_init__(self):
        if self.n_sessions < 1 or self.n_items < _N_RELATED + 2 or self.n_categories < 1:
            raise ConfigError(
                f"synthetic data needs n_sessions >= 1, n_items >= {_N_RELATED + 2} and "
                f"n_categories >= 1 (got {self.n_sessions}, {self.n_items}, "
                f"{self.n_categories})."
            )
        if self.mean_macros < 2:
            raise ConfigError(f"synthetic mean_macros must be >= 2, got {self.mean_macros}.")
        for name in ("p_interest", "p_follow", "p_return"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"synthetic {name} must lie in [0, 1].")

    @property
    def name(self) -> str:
        return "synthetic"

    @property
    def path(self) -> None:
        return None  # generated, not read: `data.source.path` is no setting of this source

    @property
    def activity_groups(self) -> dict[str, tuple[str, ...]]:
        return S.PAPER_GROUPS

    def fingerprint(self) -> str:
        """A hash of everything that determines the generated table."""
        blob = json.dumps({"v": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def load(self) -> pl.DataFrame:
        return generate(self)

    def blocks(self) -> Iterator[pl.DataFrame]:
        yield self.load()


def generate(p: SyntheticSource) -> pl.DataFrame:
    """Generate the canonical event table for parameters `p`, stage by stage.

    The stages draw from one generator in a fixed order: changing what one draws changes
    every later stage (bump GENERATOR_VERSION).
    """
    rng = np.random.default_rng(p.seed)
    catalogue = _catalogue(p, rng)
    macros = _macro_interactions(p, rng, catalogue)
    micro = _micro_behaviors(p, rng, macros.interest)
    return _events(p, rng, catalogue, macros, micro)


@dataclass(frozen=True)
class _Catalogue:
    category: np.ndarray  # (m,) category of each product
    related: np.ndarray  # (m, R) related products (same category), strongest first
    cum_pop: np.ndarray  # (m,) cumulative popularity

    def popular(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """(size,) products drawn by popularity."""
        return np.minimum(np.searchsorted(self.cum_pop, rng.random(size)), self.cum_pop.size - 1)


def _catalogue(p: SyntheticSource, rng: np.random.Generator) -> _Catalogue:
    """Popularity, categories and related products (same category)."""
    m = p.n_items
    pop = 1.0 / np.arange(1, m + 1) ** p.zipf
    pop /= pop.sum()
    cat_weights = 1.0 / np.arange(1, p.n_categories + 1) ** 0.7
    category = rng.choice(p.n_categories, size=m, p=cat_weights / cat_weights.sum())
    by_cat = np.argsort(category, kind="stable")
    cat_start = np.searchsorted(category[by_cat], np.arange(p.n_categories))
    cat_size = np.bincount(category, minlength=p.n_categories)
    own = np.empty(m, dtype=np.int64)  # each product's position inside its category
    own[by_cat] = np.arange(m) - cat_start[category[by_cat]]
    size = cat_size[category][:, None]  # (m, 1)
    step = 1 + (rng.random((m, _N_RELATED)) * np.maximum(size - 1, 1)).astype(np.int64)
    related = by_cat[cat_start[category][:, None] + (own[:, None] + step) % size]  # (m, R)
    return _Catalogue(category, related, np.cumsum(pop))


@dataclass(frozen=True)
class _Macros:
    """The K macro interactions of all sessions, session-major."""

    session: np.ndarray  # (K,)
    item: np.ndarray  # (K,) product index
    interest: np.ndarray  # (K,) the hidden interest flag


def _macro_interactions(p: SyntheticSource, rng: np.random.Generator,
                        catalogue: _Catalogue) -> _Macros:
    """Each session's chain of products, one position at a time for all sessions at once."""
    n, m = p.n_sessions, p.n_items
    length = np.minimum(2 + rng.poisson(p.mean_macros - 2, size=n), _MAX_MACROS)
    t_max = int(length.max())
    items = np.empty((n, t_max), dtype=np.int64)
    interest = rng.random((n, t_max)) < p.p_interest
    items[:, 0] = catalogue.popular(rng, n)
    liked = np.full(n, -1, dtype=np.int64)  # most recent interesting product, -1 if none
    for t in range(1, t_max):
        cur = items[:, t - 1]
        liked = np.where(interest[:, t - 1], cur, liked)
        u = rng.random(n)
        follow = catalogue.related[cur, rng.choice(_N_RELATED, size=n, p=_RELATED_WEIGHTS)]
        nxt = np.where(
            interest[:, t - 1],
            np.where(u < p.p_follow, follow, catalogue.popular(rng, n)),
            np.where((u < p.p_return) & (liked >= 0), liked, catalogue.popular(rng, n)),
        )
        same = nxt == cur  # a repeat would merge into the current macro interaction
        nxt[same] = (cur[same] + 1 + rng.integers(0, m - 1, size=int(same.sum()))) % m
        items[:, t] = nxt
        interest[:, t] |= nxt == liked  # coming back to a liked product is interest

    keep = np.arange(t_max)[None, :] < length[:, None]  # (n, t_max), session-major
    session = np.broadcast_to(np.arange(n)[:, None], keep.shape)[keep]
    return _Macros(session, items[keep], interest[keep])


@dataclass(frozen=True)
class _Micro:
    """How many micro-behaviors of each activity code every macro interaction holds."""

    counts: np.ndarray  # (K, 6) events per slot: source, three modules, cart, order
    codes: np.ndarray  # (K, 6) activity code of each slot (index into schema.ACTIVITIES)
    dwell: np.ndarray  # (K,) seconds on the product


def _micro_behaviors(p: SyntheticSource, rng: np.random.Generator,
                     interest: np.ndarray) -> _Micro:
    """Source, detail modules, cart, order and dwell of each macro interaction."""
    k = interest.size
    source = rng.choice(len(_SOURCE_PROBS), size=k, p=_SOURCE_PROBS)
    p_module = np.where(interest, 0.6, 0.12)[:, None]
    views = 1 + rng.poisson(np.where(interest, p.module_views, 0.3)[:, None], size=(k, 3))
    modules = np.where(rng.random((k, 3)) < p_module, views, 0)
    cart = rng.random(k) < np.where(interest, 0.35, 0.03)
    order = cart & interest & (rng.random(k) < 0.25)
    counts = np.column_stack([np.ones(k, dtype=np.int64), modules, cart, order])  # (k, 6)
    codes = np.column_stack([source, np.broadcast_to(np.arange(5, 10), (k, 5))])  # (k, 6)
    dwell = np.rint(
        np.exp(rng.normal(np.where(interest, np.log(80.0), np.log(12.0)), 0.6))
    ).astype(np.float64)
    return _Micro(counts, codes, dwell)


def _events(p: SyntheticSource, rng: np.random.Generator, catalogue: _Catalogue,
            macros: _Macros, micro: _Micro) -> pl.DataFrame:
    """One row per micro-behavior, with positions, timestamps and SKU-like product ids."""
    n, dwell = p.n_sessions, micro.dwell
    per_macro = micro.counts.sum(1)  # (K,)
    e_macro = np.repeat(np.arange(per_macro.size), per_macro)  # (E,)
    e_activity = np.repeat(micro.codes.ravel(), micro.counts.ravel())  # (E,)
    e_session = macros.session[e_macro]  # (E,)
    first_event = np.searchsorted(e_session, np.arange(n))
    e_pos = np.arange(e_macro.size) - first_event[e_session]

    # Time: sessions start over 30 days; macro interactions follow each other by their dwell.
    start = 1_700_000_000 + rng.integers(0, 30 * 86_400, size=n)
    m_first = np.searchsorted(macros.session, np.arange(n))
    elapsed = np.cumsum(dwell + 5) - (dwell + 5)
    m_ts = start[macros.session] + (elapsed - elapsed[m_first[macros.session]]).astype(np.int64)
    within = np.arange(e_macro.size) - np.repeat(np.cumsum(per_macro) - per_macro, per_macro)
    e_ts = m_ts[e_macro] + (dwell[e_macro] * within / per_macro[e_macro]).astype(np.int64)

    item_ids = 100_000 + rng.permutation(p.n_items)  # SKU-like ids, unrelated to popularity
    e_item = macros.item[e_macro]
    return pl.DataFrame(
        {
            S.SESSION: e_session.astype(np.int64),
            S.POS: e_pos.astype(np.int32),
            S.ITEM: item_ids[e_item].astype(np.int64),
            S.ACTIVITY: e_activity.astype(np.int32),
            S.DWELL: dwell[e_macro],
            S.TS: e_ts,
            S.CATEGORY: catalogue.category[e_item].astype(np.int32),
        }
    ).with_columns(
        pl.col(S.ACTIVITY).replace_strict(dict(enumerate(S.ACTIVITIES)), return_dtype=pl.String),
        pl.format("c{}", pl.col(S.CATEGORY)),
    )
