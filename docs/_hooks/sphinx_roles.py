"""mkdocs hook: Sphinx cross-reference roles in docstrings shown as Sphinx shows them.

The docstrings name other objects as ``:class:`~pyro_vae.models.base.LatentModel```, which reads
well in ``help()`` and in Sphinx, but mkdocstrings renders Markdown and would print the role as
text (":class:" before the code span). This hook drops the role and, as Sphinx does for a leading
``~``, keeps only the last component of the dotted name.
"""

import re

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):<code>(~?)([^<]*)</code>")


def _code(match: re.Match) -> str:
    name = match.group(2).rsplit(".", 1)[-1] if match.group(1) else match.group(2)
    return f"<code>{name}</code>"


def on_page_content(content: str, page, config, files) -> str:
    return ROLE.sub(_code, content)
