# -*- test-case-name: tests.unit.spam.test_heuristic -*-
"""What comment spam says: phrases, money-making claims, abused link hosts.

Data for :mod:`fastedge.spam.heuristic`, kept apart so that it can grow
without touching the scoring. Every phrase here is typical of the spam
families every comment section sees (work-from-home and get-rich offers,
loans, gambling, pharmacy and miracle cures, fake recovery services,
dating, SEO and follower selling), in the languages the widget is used
in. A phrase alone never makes a comment spam: each adds one point, a few
at most (docs/spam.md).
"""

from __future__ import annotations

import re
import unicodedata


def normalise(text: str) -> str:
    """Text as phrases are matched: NFKC, case-folded, words only, single spaces."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.findall(r"\w+", folded))


#: Phrases matched on whole words of the normalised text (case-folded,
#: NFKC, punctuation dropped). Lower case.
PHRASES: frozenset[str] = frozenset(
    {
        # English
        "work from home",
        "work at home",
        "working from home just",
        "no experience",
        "make money online",
        "earn money",
        "extra income",
        "passive income",
        "financial freedom",
        "investment platform",
        "recovery expert",
        "recover lost funds",
        "recover my funds",
        "funds back",
        "professional hacker",
        "legit hacker",
        "spell caster",
        "love spell",
        "get your love back",
        "herbal medicine",
        "herbal formula",
        "cured me",
        "was cured",
        "without prescription",
        "no prescription",
        "no rx",
        "weight loss",
        "lose weight",
        "lost 15 kg",
        "free shipping",
        "order now",
        "buy now",
        "limited stock",
        "limited time",
        "today only",
        "click here",
        "sign up now",
        "free consultation",
        "best prices",
        "best price",
        "cheapest price",
        "low price",
        "affordable price",
        "100 guaranteed",
        "guaranteed results",
        "fix your credit",
        "credit score",
        "urgent loan",
        "personal loan",
        "business loans",
        "interest rate",
        "welcome bonus",
        "free spins",
        "no deposit",
        "betting tips",
        "crypto signals",
        "signals group",
        "airdrop",
        "claim",
        "connect your wallet",
        "backlinks",
        "guest posts",
        "buy followers",
        "hot singles",
        "singles in your area",
        "hot girls",
        "meet girls",
        "my profile",
        "check my profile",
        "visit my profile",
        "details on my profile",
        "message me",
        "contact him",
        "contact her",
        "contact us",
        "reach him",
        "generator",
        "no human verification",
        "game keys",
        "photo editing services",
        "web development services",
        "seo services",
        "digital marketing",
        "essay writing",
        "dating app",
        # German
        "von zu hause",
        "ohne schufa",
        "kredit ohne",
        "schnelle auszahlung",
        "willkommensbonus",
        "freispiele",
        "gutschein",
        "jetzt registrieren",
        "schreib mir",
        # French
        "retour de l être aimé",
        "marabout",
        "voyant",
        "résultats garantis",
        "rachat de crédit",
        "pronostics",
        "gagnez",
        "réponse immédiate",
        # Spanish / Portuguese / Italian
        "desde casa",
        "sin experiencia",
        "gana dinero",
        "bono de bienvenida",
        "vuelos baratos",
        "visita mi perfil",
        "renda extra",
        "ganhe",
        "compre seguidores",
        "emagrecer",
        "milagroso",
        "lavoro da casa",
        "guadagna",
        "dimagrire",
        "sconto",
        # Dutch / Polish / Turkish
        "verdien",
        "snel geld",
        "pożyczka",
        "bez bik",
        "bonus veren",
        "deneme bonusu",
        "takipçi",
        "satın al",
        # Russian
        "заработок",
        "без вложений",
        "ставки",
        "бонус",
        # Chinese / Japanese / Korean (matched as substrings)
        "兼职",
        "日赚",
        "加微信",
        "代开",
        "发票",
        "副業",
        "稼げる",
        "月収",
        "スーパーコピー",
        "出会い",
        "完全無料",
        "대출",
        "신용불량자",
        # Arabic
        "اربح",
        "واتساب",
    }
)
#: Generic praise that link spam opens with, matched like :data:`PHRASES`
#: (it counts only in a comment with a link).
PRAISE: frozenset[str] = frozenset(
    {
        "great article",
        "great post",
        "nice post",
        "nice blog",
        "nice article",
        "great blog",
        "very informative",
        "thanks for sharing",
        "thank you for sharing",
        "really enjoyed reading",
        "keep up the good work",
        "very helpful article",
        "excelente post",
        "buen artículo",
        "ótimo artigo",
        "super artikel",
        "très bon article",
        "ottimo articolo",
    }
)
#: Phrases of scripts written without spaces, matched as substrings.
_NO_SPACES = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")

#: Money promised per unit of time ("$500 a day", "€250 per dag",
#: "5000 рублей в день", "R$ 500 por dia").
_CURRENCY = r"(?:[$€£¥₹]|r\$|usd|eur|euros?|dollars?|zł|рубл[а-я]{0,4}|руб|元|円)"
# Bounded repetitions only (see fastedge.spam.heuristic._LINK).
_AMOUNT = r"(?:" + _CURRENCY + r"\s?\d[\d,.]{0,15}|\d[\d,.]{0,15}\s?(?:k\s?)?" + _CURRENCY + r")"
_TIME = (
    r"(?:day|hour|week|month|tag|stunde|woche|monat|dag|uur|maand|jour|heure|semaine|mois|día|dia|hora|"
    r"semana|mes|mês|giorno|ora|settimana|mese|день|час|неделю|месяц|dzień|godzinę|miesiąc)"
)
MONEY_RATE = re.compile(
    _AMOUNT + r"[^.!?\n]{0,24}?\b(?:a|an|per|each|every|pro|par|por|al|ao|в|за|/)\s?" + _TIME, re.IGNORECASE
)

#: Link hosts comment spam leans on: top-level domains with the most abuse
#: reported per registered name (Spamhaus's and Interisle's yearly lists),
#: URL shorteners and invite links that hide where a link goes.
ABUSED_TLDS: frozenset[str] = frozenset(
    {
        "xyz", "top", "shop", "online", "site", "click", "icu", "buzz", "live", "fun", "bet", "win", "store",
        "club", "vip", "loan", "work", "rest", "monster", "cyou", "sbs", "cfd", "tk", "ml", "ga", "cf", "gq",
        "pw", "casino", "app",
    }
)  # fmt: skip
HIDING_HOSTS: frozenset[str] = frozenset(
    {"bit.ly", "tinyurl.com", "t.me", "t.co", "goo.gl", "is.gd", "cutt.ly", "rb.gy", "shorturl.at", "wa.me"}
)


_SPACED = tuple((p, " " + normalise(p) + " ") for p in sorted(PHRASES) if not _NO_SPACES.search(p))
_UNSPACED = tuple(p for p in sorted(PHRASES) if _NO_SPACES.search(p))


_PRAISE = tuple(" " + normalise(p) + " " for p in sorted(PRAISE))


def praises(text: str) -> bool:
    """Whether ``text`` holds one of the :data:`PRAISE` phrases."""
    body = " " + normalise(text) + " "
    return any(p in body for p in _PRAISE)


def phrases_in(text: str) -> set[str]:
    """The :data:`PHRASES` ``text`` contains."""
    body = " " + normalise(text) + " "
    found = {phrase for phrase, spaced in _SPACED if spaced in body}
    found.update(phrase for phrase in _UNSPACED if phrase in body)
    return found


def promises_money(text: str) -> bool:
    """Whether ``text`` promises an amount of money per unit of time."""
    return MONEY_RATE.search(unicodedata.normalize("NFKC", text)) is not None
