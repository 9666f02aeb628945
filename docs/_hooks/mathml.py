"""mkdocs hook: LaTeX math typeset as MathML when the site is built.

Pages write math as ``$...$`` (inline) and ``$$...$$`` (display); ``pymdownx.arithmatex``
(generic mode) finds it outside code and wraps it, and this hook converts each piece to MathML
with ``latex2mathml``. Browsers render MathML natively, so a page needs no script, no font from
a CDN and no network: the site reads the same offline. A formula that does not convert fails the
build (mkdocs.yml is strict), naming the page.
"""

import html
import re

from latex2mathml.converter import convert

BLOCK = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.S)
INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.S)
# latex2mathml writes \log p as <mi>log</mi><mi>p</mi>, which browsers set as "logp"; TeX puts a
# thin space after such an operator name unless an opening bracket follows: so do we.
OPERATOR_NAME = re.compile(
    r"(<mi>(?:log|exp|ln|det|tr|Pr|sin|cos|tanh)</mi>)"
    r"(?!(?:<mrow>)?<mo[^>]*>(?:[([{]|&#x0(?:0028|005B|007B);))"
)
THIN_SPACE = '<mspace width="0.1667em"></mspace>'
# latex2mathml writes \min_{f,g} as a subscript (<msub>); in a display formula TeX sets the
# limits of min, max, sup, inf, lim and argmin/argmax under the operator, as \sum's already are.
LIMITS_BESIDE = re.compile(
    r'<msub><mo(?: movablelimits="true")?>(?:min|max|sup|inf|lim|argmin|argmax)</mo>'
)
SUBSCRIPT_TAG = re.compile(r"</?msub>")


def _mathml(latex: str, display: str, page) -> str:
    try:
        mathml = convert(html.unescape(latex).strip(), display=display)
    except Exception as exc:
        raise ValueError(f"{page.file.src_path}: cannot typeset ${latex}$: {exc}") from exc
    if display == "block":
        mathml = _limits_under(mathml)
    return OPERATOR_NAME.sub(lambda m: m.group(1) + THIN_SPACE, mathml)


def _limits_under(mathml: str) -> str:
    """Each ``<msub>`` of an operator with limits (``LIMITS_BESIDE``) turned into ``<munder>``,
    up to its own closing tag (subscripts nest)."""
    while (found := LIMITS_BESIDE.search(mathml)) is not None:
        start, depth = found.start(), 0
        for tag in SUBSCRIPT_TAG.finditer(mathml, start):
            depth += -1 if tag.group().startswith("</") else 1
            if depth == 0:
                inner = mathml[start + len("<msub>") : tag.start()]
                mathml = f"{mathml[:start]}<munder>{inner}</munder>{mathml[tag.end() :]}"
                break
    return mathml


def on_page_content(content: str, page, config, files) -> str:
    content = BLOCK.sub(
        lambda m: f'<div class="math-block">{_mathml(m.group(1), "block", page)}</div>', content
    )
    return INLINE.sub(lambda m: _mathml(m.group(1), "inline", page), content)
