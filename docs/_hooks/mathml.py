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


def _mathml(latex: str, display: str, page) -> str:
    try:
        mathml = convert(html.unescape(latex).strip(), display=display)
    except Exception as exc:
        raise ValueError(f"{page.file.src_path}: cannot typeset ${latex}$: {exc}") from exc
    return OPERATOR_NAME.sub(lambda m: m.group(1) + THIN_SPACE, mathml)


def on_page_content(content: str, page, config, files) -> str:
    content = BLOCK.sub(
        lambda m: f'<div class="math-block">{_mathml(m.group(1), "block", page)}</div>', content
    )
    return INLINE.sub(lambda m: _mathml(m.group(1), "inline", page), content)
