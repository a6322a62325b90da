#!/usr/bin/env python3
"""gen_chat_fixtures.py: write model-llama/tests/fixtures/chat_templates.json, the expected
chat-template renderings that model-llama's `chat` tests compare against.

Each template is rendered by Python's jinja2 in the same environment Hugging Face
`transformers` builds in `apply_chat_template` (ImmutableSandboxedEnvironment with
trim_blocks, lstrip_blocks and the loopcontrols extension; the globals `raise_exception` and
`strftime_now`; a `tojson` filter calling `json.dumps(..., ensure_ascii=False)`), with the
context `messages`, `tools=None`, `documents=None`, `add_generation_prompt`, `bos_token`,
`eos_token`.

Templates:
  smollm2              `tokenizer.chat_template` of models/SmolLM2-135M-Instruct.Q4_1.gguf
                       (bos/eos strings from its token list)
  llama3               shared/data/tokenizers/llama3/tokenizer_config.json
  deepseek-r1-distill  shared/data/tokenizers/deepseek-r1-distill-llama-8b/tokenizer_config.json
  features             a synthetic template using the Jinja features HF templates rely on

Run once from the repository root after scripts/setup-python.sh and scripts/fetch-smollm2.sh:
    .venv/bin/python scripts/gen_chat_fixtures.py [--shared ../shared/data]
The output is deterministic (no template here calls strftime_now).
"""

import argparse
import json
import os
import sys

import gguf
import jinja2
import jinja2.ext
import jinja2.sandbox

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FEATURES_TEMPLATE = """\
{%- set ns = namespace(count=0) %}
{% for message in messages %}
    {% if message['role'] == 'system' %}
        {% continue %}
    {% endif %}
    {% if ns.count >= 3 %}
        {% break %}
    {% endif %}
    {% set ns.count = ns.count + 1 %}
[{{ loop.index }}/{{ loop.length }}] {{ message.role.upper() }}: {{ message['content'].strip() }}
    {% if message.content.startswith('Q') %}
starts with Q; words={{ message.content.split() | length }}; last={{ message.content.split(' ')[-1] }}
    {% endif %}
json={{ message | tojson }}
get={{ message.get('name', 'anon') }} first={{ loop.first }} tools={{ tools }} none={{ message.get('name') }}
    {% if message.content.endswith('.') or 'tab' in message.content %}
ends: {{ message.content.rstrip('.').lstrip().replace('4', 'four').lower() }}
    {% endif %}
{% endfor %}
{{ messages[-1] | tojson(indent=2) }}
{% for k, v in messages[0].items() %}{{ k }}={{ v | trim | replace('\\n', ' ') }};{% endfor %}

{% if add_generation_prompt %}
{{ bos_token }}GEN{{ eos_token }}
{% endif %}
"""


def hf_environment():
    """The jinja2 environment transformers uses for chat templates."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        from datetime import datetime
        return datetime.now().strftime(fmt)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def m(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = [
    ([m("user", "What is the capital of France?")], True),
    ([m("system", "You are a doctor. Answer briefly."),
      m("user", "  我头痛三天了，怎么办？\n"),
      m("assistant", "<think>\nHeadache for 3 days.\n</think>\n\n多喝水，休息。"),
      m("user", "Thanks! Anything else?")], True),
    ([m("system", "Be concise."),
      m("user", "Say \"hi\" with a tab\tand a backslash \\."),
      m("assistant", "hi")], False),
]

FEATURE_CONVERSATIONS = [
    ([m("system", "  Be brief.\n"),
      m("user", "Quick question: what's 2+2?  "),
      m("assistant", "It's 4 — 四."),
      m("user", "Quoted \"text\" with \\ and \t tab"),
      m("user", "fifth turn (never printed)")], True),
    ([m("user", "Hello.")], False),
]


def gguf_template(path):
    reader = gguf.GGUFReader(path)

    def field(key):
        if key not in reader.fields:
            sys.exit(f"{path}: no {key} in metadata")
        return reader.fields[key].contents()

    tokens = field("tokenizer.ggml.tokens")
    return (field("tokenizer.chat_template"),
            tokens[field("tokenizer.ggml.bos_token_id")],
            tokens[field("tokenizer.ggml.eos_token_id")])


def config_template(path):
    with open(path, encoding="utf-8") as f:
        config = json.load(f)

    def special(key):
        value = config.get(key)
        return value.get("content", "") if isinstance(value, dict) else (value or "")

    return config["chat_template"], special("bos_token"), special("eos_token")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", default=os.path.join(ROOT, "..", "shared", "data"),
                        help="the shared data folder (default: ../shared/data)")
    parser.add_argument("--gguf", default=os.path.join(ROOT, "models",
                                                       "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--out", default=os.path.join(ROOT, "model-llama", "tests", "fixtures",
                                                      "chat_templates.json"))
    args = parser.parse_args()

    tok = os.path.join(args.shared, "tokenizers")
    sources = [
        ("smollm2", gguf_template(args.gguf), CONVERSATIONS),
        ("llama3", config_template(os.path.join(tok, "llama3", "tokenizer_config.json")),
         CONVERSATIONS),
        ("deepseek-r1-distill",
         config_template(os.path.join(tok, "deepseek-r1-distill-llama-8b",
                                      "tokenizer_config.json")),
         CONVERSATIONS),
        ("features", (FEATURES_TEMPLATE, "<s>", "</s>"), FEATURE_CONVERSATIONS),
    ]
    env = hf_environment()
    templates = []
    for name, (template, bos, eos), conversations in sources:
        compiled = env.from_string(template)
        cases = []
        for messages, add_generation_prompt in conversations:
            expected = compiled.render(messages=messages, tools=None, documents=None,
                                       add_generation_prompt=add_generation_prompt,
                                       bos_token=bos, eos_token=eos)
            cases.append({"messages": messages, "add_generation_prompt": add_generation_prompt,
                          "expected": expected})
        templates.append({"name": name, "template": template, "bos_token": bos,
                          "eos_token": eos, "cases": cases})

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"generator": "scripts/gen_chat_fixtures.py", "jinja2": jinja2.__version__,
                   "templates": templates}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: " + ", ".join(
        f"{t['name']} ({len(t['cases'])} cases)" for t in templates))


if __name__ == "__main__":
    main()
