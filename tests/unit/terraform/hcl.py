"""Just enough of Terraform's language to evaluate the module in terraform/ the way `terraform plan`
would: python-hcl2 parses the files; this walks its syntax tree for the expressions the module and
its example use (literals, strings with interpolation, objects, tuples, for expressions,
conditionals, attribute and index access, a dozen functions, and variable types with optional()
defaults). Anything else raises Unsupported, so the module cannot quietly grow past what the
contract test understands."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2
import yaml
from lark import Token, Tree


class Unsupported(Exception):
    pass


@dataclass
class Block:
    kind: str
    labels: list[str]
    attrs: dict[str, Tree]
    blocks: list[Block] = field(default_factory=list)


def blocks_of(path: Path) -> list[Block]:
    """Every top-level block of every .tf file in PATH (a directory), attributes left unevaluated."""
    found: list[Block] = []
    for tf in sorted(path.glob("*.tf")):
        found += [_block(b) for b in _trees(hcl2.parses_to_tree(tf.read_text()).children[0], "block")]
    return found


def _trees(node: Tree, kind: str) -> list[Tree]:
    return [c for c in node.children if isinstance(c, Tree) and c.data == kind]


def _block(tree: Tree) -> Block:
    head = [c for c in tree.children if isinstance(c, Tree) and c.data in ("identifier", "string")]
    body = _trees(tree, "body")[0]
    attrs = {_name(a.children[0]): a.children[2] for a in _trees(body, "attribute")}
    return Block(_name(head[0]), [_literal_string(s) for s in head[1:]], attrs,
                 [_block(b) for b in _trees(body, "block")])


def _name(identifier: Tree) -> str:
    return str(identifier.children[0])


def _literal_string(tree: Tree) -> str:
    return str(Evaluator({}).eval(tree))


def _unescape(text: str) -> str:
    return json.loads(f'"{text}"') if "\\" in text else text


def _fileset(base: str, pattern: str) -> list[str]:
    return sorted(str(p.relative_to(base)) for p in Path(base).glob(pattern) if p.is_file())


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "jsonencode": lambda v: json.dumps(v, separators=(",", ":"), sort_keys=True),
    "yamldecode": yaml.safe_load,
    "merge": lambda *maps: {k: v for m in maps for k, v in m.items()},
    "lower": str.lower,
    "sort": sorted,
    "keys": lambda m: sorted(m),
    "contains": lambda items, v: v in items,
    "file": lambda p: Path(p).read_text(),
    "fileset": _fileset,
    "trimsuffix": lambda s, suffix: s[: -len(suffix)] if suffix and s.endswith(suffix) else s,
}


class Evaluator:
    """Evaluates expression trees against SCOPE (var, each, local, path, iteration names)."""

    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope

    def eval(self, node: Tree | Token) -> Any:
        if isinstance(node, Token):
            raise Unsupported(f"token {node.type} where an expression belongs")
        method = getattr(self, f"_{node.data}", None)
        if method is None:
            raise Unsupported(f"expression {node.data!r} (line {getattr(node.meta, 'line', '?')})")
        return method(node)

    def _subtrees(self, node: Tree) -> list[Tree]:
        return [c for c in node.children if isinstance(c, Tree) and c.data != "new_line_or_comment"]

    def _expr_term(self, node: Tree) -> Any:
        (inner,) = self._subtrees(node)
        return self.eval(inner)

    def _identifier(self, node: Tree) -> Any:
        name = _name(node)
        if name not in self.scope:
            raise Unsupported(f"unknown name {name!r}")
        return self.scope[name]

    def _literal_value(self, node: Tree) -> Any:
        return {"true": True, "false": False, "null": None}[str(node.children[0])]

    def _int_lit(self, node: Tree) -> int:
        return int(str(node.children[0]))

    def _float_lit(self, node: Tree) -> float:
        return float(str(node.children[0]))

    def _string(self, node: Tree) -> str:
        return "".join(self._part(p) for p in self._subtrees(node))

    def _part(self, part: Tree) -> str:
        (inner,) = part.children
        if isinstance(inner, Token):
            return _unescape(str(inner))
        value = self.eval(self._subtrees(inner)[0])  # interpolation: ${ expr }
        return value if isinstance(value, str) else json.dumps(value)

    def _heredoc_template(self, node: Tree) -> str:
        text = str(node.children[0])
        body = text.split("\n", 1)[1].rsplit("\n", 1)[0]
        if text.startswith("<<-"):
            lines = body.split("\n")
            indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
            body = "\n".join(line[indent:] for line in lines)
        return body + "\n"

    def _tuple(self, node: Tree) -> list[Any]:
        return [self.eval(c) for c in self._subtrees(node)]

    def _object(self, node: Tree) -> dict[str, Any]:
        out = {}
        for elem in self._subtrees(node):
            key_tree, value_tree = self._subtrees(elem)
            (key,) = self._subtrees(key_tree)
            (inner,) = self._subtrees(key) if key.data == "expr_term" else (key,)
            out[_name(inner) if inner.data == "identifier" else str(self.eval(inner))] = self.eval(value_tree)
        return out

    def _get_attr_expr_term(self, node: Tree) -> Any:
        target, attr = self._subtrees(node)
        value, name = self.eval(target), _name(self._subtrees(attr)[0])
        if not isinstance(value, dict) or name not in value:
            raise Unsupported(f"no attribute {name!r}")
        return value[name]

    def _index_expr_term(self, node: Tree) -> Any:
        target, index = self._subtrees(node)
        return self.eval(target)[self.eval(self._subtrees(index)[0])]

    def _function_call(self, node: Tree) -> Any:
        name_tree, *rest = self._subtrees(node)
        name = _name(name_tree)
        if name not in FUNCTIONS:
            raise Unsupported(f"function {name}()")
        args = [self.eval(a) for a in self._subtrees(rest[0])] if rest else []
        return FUNCTIONS[name](*args)

    def _conditional(self, node: Tree) -> Any:
        cond, yes, no = self._subtrees(node)
        return self.eval(yes) if self.eval(cond) else self.eval(no)

    def _unary_op(self, node: Tree) -> Any:
        op, (operand,) = str(node.children[0]), self._subtrees(node)
        return -self.eval(operand) if op == "-" else not self.eval(operand)

    def _for_tuple_expr(self, node: Tree) -> list[Any]:
        intro, body, *cond = self._subtrees(node)
        return [self._with(names, body) for names in self._iterate(intro, cond)]

    def _for_object_expr(self, node: Tree) -> dict[str, Any]:
        intro, key, value, *cond = self._subtrees(node)
        return {self._with(names, key): self._with(names, value) for names in self._iterate(intro, cond)}

    def _iterate(self, intro: Tree, cond: list[Tree]) -> list[dict[str, Any]]:
        *idents, source = self._subtrees(intro)
        collection = self.eval(source)
        pairs = collection.items() if isinstance(collection, dict) else enumerate(collection)
        names = [_name(i) for i in idents]
        bound = [dict(zip(names, (k, v), strict=True)) if len(names) == 2 else {names[0]: v} for k, v in pairs]
        if cond:  # for_cond: "if" expr
            return [b for b in bound if self._with(b, self._subtrees(cond[0])[0])]
        return bound

    def _with(self, names: dict[str, Any], node: Tree) -> Any:
        return Evaluator({**self.scope, **names}).eval(node)


def typed(type_tree: Tree, value: Any, where: str) -> Any:
    """VALUE converted to the variable type TYPE_TREE as Terraform does: optional() attributes
    filled with their defaults, required ones checked."""
    node = type_tree
    while node.data == "expr_term":
        (node,) = [c for c in node.children if isinstance(c, Tree)]
    if node.data == "identifier":
        return _primitive(_name(node), value, where)
    if node.data != "function_call":
        raise Unsupported(f"type {node.data}")
    name, args = _name(node.children[0]), [c for c in node.children if isinstance(c, Tree)][1:]
    inner = [a for a in args[0].children if isinstance(a, Tree)] if args else []
    if name in ("map", "list", "set"):
        if name == "map":
            return {k: typed(inner[0], v, f"{where}[{k!r}]") for k, v in _need(value, dict, where).items()}
        return [typed(inner[0], v, f"{where}[{i}]") for i, v in enumerate(_need(value, list, where))]
    if name == "object":
        return _object_type(inner[0], _need(value, dict, where), where)
    raise Unsupported(f"type {name}()")


def _object_type(spec: Tree, value: dict[str, Any], where: str) -> dict[str, Any]:
    ev = Evaluator({})
    out = {}
    for elem in ev._subtrees(ev._subtrees(spec)[0]):
        key_tree, attr_type = ev._subtrees(elem)
        key = _name(ev._subtrees(ev._subtrees(key_tree)[0])[0])
        call = ev._subtrees(attr_type)[0]
        if call.data == "function_call" and _name(call.children[0]) == "optional":
            opt_args = ev._subtrees(ev._subtrees(call)[1])
            default = ev.eval(opt_args[1]) if len(opt_args) > 1 else None
            out[key] = typed(opt_args[0], value[key], f"{where}.{key}") if key in value else default
        elif key not in value:
            raise ValueError(f"{where}: attribute {key!r} is required")
        else:
            out[key] = typed(attr_type, value[key], f"{where}.{key}")
    extra = set(value) - set(out)
    if extra:
        raise ValueError(f"{where}: unexpected attribute {sorted(extra)[0]!r}")
    return out


def _primitive(name: str, value: Any, where: str) -> Any:
    kinds: dict[str, tuple[type, ...]] = {"string": (str,), "number": (int, float), "bool": (bool,), "any": (object,)}
    if name not in kinds:
        raise Unsupported(f"type {name}")
    if value is not None and (not isinstance(value, kinds[name]) or (name == "number" and isinstance(value, bool))):
        raise ValueError(f"{where}: {name} required, got {type(value).__name__}")
    return value


def _need(value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind):
        raise ValueError(f"{where}: {kind.__name__} required, got {type(value).__name__}")
    return value
