#!/usr/bin/env python3
"""Classifies the failing cases of a pjdfstest run on keyfs (called by tools/pjdfstest.sh).

    pjdfstest_classify.py [--list-expected] PJDFSTEST_DIR RESULTS_DIR

RESULTS_DIR/<engine>/<group>/ holds prove.out (the output of `prove -rv` on tests/<group>,
plus any re-runs after a bail out) and trace/, one `sh -x` trace per .t file (named after
the file's path under tests/ with '/' turned into '_'). Prints a table per engine (total
cases, failed, expected, unexpected) and the list of unexpected failures; exits 0 only if
there are none (1 if there are, 2 if the results cannot be read).

keyfs refuses hard links and special files by design (link, mknod of a fifo/block/char
device, mkfifo and binding a unix socket fail with EPERM). A failing case is EXPECTED when
it is a direct consequence of that, by one of these rules (the first that applies is shown).
They follow the names of each .t file through its `sh -x` trace (misc.sh's create_file
makes every object with an `expect 0 <op>` case, so each refusal is a case of its own):
  R1 own-op    its own command is link(at), mkfifo(at), mknod(at) of type b/c/f, bind(at) or
               connect(at), and it got EPERM.
  R2 absent    it names, as an operand or a path prefix, an ABSENT name, i.e. one whose
               special file or link was refused and that no case has created since; a
               symlink to such a name (unless the op does not follow it); or a STRAY name,
               one that an expected case created, replaced or removed by mistake (after the
               fifo n0 was refused, `expect EEXIST mkdir n0` got 0: n0 is now a directory).
               A refused `rename A B` of an absent A makes B absent too. Not expected: a case
               that expected 0 from creating exactly that absent name (create, mkdir,
               symlink, open O_CREAT, rename's target) -- that must work either way.
               Also R2: it expected ENOTEMPTY/EEXIST from a directory that is empty only
               because the absent name in it is missing.
  R3 captured  its expected value (or a test_check operand) is an error a variable captured
               from a query of an absent name (inode=ENOENT, then `expect ${inode} ...`).
  R4 after     it is a test_check (times captured around an operation) right after an
               expect case that failed as expected: the operation never happened.
  R5 link-src  it stats the source A of a refused `link A B` (nlink, and the mode/owner the
               test then changed through B, cannot be what the test expects).
  R6 limit     the whole .t file exercises a documented keyfs limit other than EPERM
               (LIMITS below: open/25.t writes at 2 GiB, past the largest value, 1 GiB).
Everything else is UNEXPECTED, as are bail outs, cases planned but not run, parse errors and
non-zero exits. A file without a trace gets R1 only.
"""
import argparse
import collections
import os
import re
import sys

SPECIAL_OPS = {'link', 'linkat', 'mkfifo', 'mkfifoat', 'bind', 'bindat', 'connect', 'connectat'}
MKNOD_OPS = {'mknod': 1, 'mknodat': 2}  # op -> index of the type argument
SPECIAL_MKNOD_TYPES = {'b', 'c', 'f'}   # pjdfstest: f = fifo, o = regular file, d = directory
ERRNO_RE = re.compile(r'^E[A-Z0-9]+$')
NOT_OK_RE = re.compile(r"^not ok (\d+) - tried '(.*)', expected (.*?), got (.*)$")
TAP_RE = re.compile(r'^(not )?ok (\d+)\b(.*)$')
HEADER_RE = re.compile(r'^(\S+\.t) \.\.\s*(.*)$')
PLAN_RE = re.compile(r'^1\.\.(\d+)')
DIRECTIVE_RE = re.compile(r'#\s*(TODO|SKIP)\b', re.I)


# Test files whose failures follow from a documented limit (README, keyfs(1)), with why.
LIMITS = {
    'open/25.t': 'R6 limit: values are at most 1 GiB (EFBIG); this file writes at 2 GiB',
}


def split_command(cmd):
    """'-u 1 -g 2 open x O_RDWR : fstat 0 mode' -> [['open','x','O_RDWR'], ['fstat','0','mode']]"""
    toks = cmd.split()
    while toks and toks[0] in ('-u', '-g', '-U'):
        toks = toks[2:]
    if toks and toks[0] == '--':
        toks = toks[1:]
    ops, cur = [], []
    for t in toks:
        if t == ':':
            ops.append(cur)
            cur = []
        else:
            cur.append(t)
    ops.append(cur)
    return [o for o in ops if o]


def special_target(op):
    """The name an op would create as a special file or hard link, else None."""
    name, args = op[0], op[1:]
    if name in ('mkfifo', 'bind', 'connect') and args:
        return args[0] if name != 'connect' else None
    if name in ('mkfifoat', 'bindat') and len(args) > 1:
        return args[1]
    if name == 'link' and len(args) > 1:
        return args[1]
    if name == 'linkat' and len(args) > 3:
        return args[3]
    if name in MKNOD_OPS:
        i = MKNOD_OPS[name]
        if len(args) > i and args[i] in SPECIAL_MKNOD_TYPES:
            return args[i - 1]
    return None


def is_special_op(op):
    if op[0] in SPECIAL_OPS:
        return True
    if op[0] in MKNOD_OPS:
        i = MKNOD_OPS[op[0]]
        return len(op) > i + 1 and op[i + 1] in SPECIAL_MKNOD_TYPES
    return False


def link_source(op):
    if op[0] == 'link' and len(op) > 2:
        return op[1]
    if op[0] == 'linkat' and len(op) > 4:
        return op[2]
    return None


def created_names(op):
    """Names an op creates when it succeeds (ordinary objects, where existence matters not)."""
    name, args = op[0], op[1:]
    if name in ('create', 'mkdir') and args:
        return [args[0]]
    if name in ('mkdirat',) and len(args) > 1:
        return [args[1]]
    if name == 'symlink' and len(args) > 1:
        return [args[1]]
    if name == 'symlinkat' and len(args) > 2:
        return [args[2]]
    if name == 'open' and len(args) > 1 and 'O_CREAT' in args[1].split(','):
        return [args[0]]
    if name == 'openat' and len(args) > 2 and 'O_CREAT' in args[2].split(','):
        return [args[1]]
    if name == 'rename' and len(args) > 1:
        return [args[1]]
    if name == 'renameat' and len(args) > 3:
        return [args[3]]
    if name in MKNOD_OPS:
        i = MKNOD_OPS[name]
        if len(args) > i and args[i] in ('o', 'd'):
            return [args[i - 1]]
    return []


def removed_names(op):
    name, args = op[0], op[1:]
    if name in ('unlink', 'rmdir') and args:
        return [args[0]]
    if name in ('unlinkat',) and len(args) > 1:
        return [args[1]]
    if name == 'rename' and args:
        return [args[0]]
    if name == 'renameat' and len(args) > 1:
        return [args[1]]
    return []


class Case:
    def __init__(self, num):
        self.num = num
        self.ok = None          # True / False
        self.todo = False
        self.cmd = None         # command text as tried (TAP) or traced
        self.expected = None
        self.got = None
        self.kind = 'expect'    # expect | test_check | other
        self.before = None      # for test_check: the command of the expect case before it
        self.verdict = None     # None (passed) | ('expected', rule) | ('unexpected', why)


class TFile:
    def __init__(self, path):
        self.path = path            # relative to tests/, e.g. open/00.t
        self.plan = None
        self.cases = collections.OrderedDict()
        self.bail = None
        self.exit = None            # "Dubious, test returned N"
        self.parse_errors = []
        self.extra = []             # synthetic unexpected failures (not run, bail out, ...)
        self.trace = None
        self.test_checks = []       # the .t's test_check lines: ['$a', '-lt', '$b']
        self.notes = []             # non-TAP lines the file printed
        self.missing = 0


def parse_prove(text, tests_dir):
    """Splits prove -v output into per-.t sections (a later run of the same file wins)."""
    files = collections.OrderedDict()
    cur = None
    summary_file = None
    in_summary = False
    for line in text.splitlines():
        line = line.rstrip('\n')
        m = HEADER_RE.match(line)
        if m and not in_summary:
            rel = os.path.relpath(os.path.realpath(m.group(1)), tests_dir)
            cur = TFile(rel)
            files[rel] = cur
            rest = m.group(2).strip()
            if rest.startswith('skipped'):
                cur.plan = 0
            continue
        if line.startswith('Test Summary Report'):
            in_summary, cur = True, None
            continue
        if in_summary:
            m = re.match(r'^(\S+\.t) \(Wstat', line)
            if m:
                summary_file = files.get(os.path.relpath(os.path.realpath(m.group(1)), tests_dir))
            elif 'Parse errors:' in line and summary_file is not None:
                summary_file.parse_errors.append(line.split('Parse errors:', 1)[1].strip())
            elif line.startswith('Files=') or line.startswith('Result:'):
                in_summary = False
            continue
        if cur is None:
            continue
        if line.startswith('Bail out!'):
            cur.bail = line[len('Bail out!'):].strip() or '(no reason given)'
            continue
        m = PLAN_RE.match(line)
        if m and cur.plan is None and not cur.cases:
            cur.plan = int(m.group(1))
            continue
        m = re.match(r'^Dubious, test returned (\d+)', line)
        if m:
            cur.exit = int(m.group(1))
            continue
        if line.startswith('Failed ') and 'subtests' in line or line in ('ok', 'skipped'):
            continue
        m = TAP_RE.match(line)
        if not m:
            # prove's own lines are 'Failed N/M subtests', 'ok', 'All N subtests passed', ...
            if line.strip() and not re.match(r'^\s*(#|All \d|\(less|Bailout called)', line):
                cur.notes.append(line.strip())
            continue
        if m:
            num = int(m.group(2))
            c = Case(num)
            c.ok = m.group(1) is None
            rest = m.group(3)
            d = DIRECTIVE_RE.search(rest)
            if d:
                c.todo = True
                c.ok = True     # prove counts TODO failures and skips as passes
            nm = NOT_OK_RE.match(line)
            if nm and not c.ok:
                c.cmd, c.expected, c.got = nm.group(2), nm.group(3), nm.group(4)
            if num in cur.cases:
                cur.parse_errors.append('test %d reported twice' % num)
            cur.cases[num] = c
    return files


def parse_trace(path, fstest_names=('pjdfstest',)):
    """Events in execution order from a `sh -x` trace (dash format, no quoting):
    ('call', kind, args)      an expect / test_check / jexpect call
    ('case', ok, num)         echo of ok N / not ok N
    ('query', args)           a pjdfstest run outside expect (a capture such as inode=`...`)
    ('assign', var, value)    a variable assignment
    """
    events = []
    try:
        with open(path, errors='replace') as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    in_expect = False
    for line in lines:
        if not line.startswith('+ '):
            continue
        body = line[2:]
        word, _, rest = body.partition(' ')
        if word in ('expect', 'jexpect', 'test_check'):
            events.append(('call', word, rest))
            in_expect = word != 'test_check'
            continue
        if word == 'echo':
            m = re.match(r'^(not )?ok (\d+)\b', rest)
            if m:
                events.append(('case', m.group(1) is None, int(m.group(2))))
                in_expect = False
            continue
        if os.path.basename(word) in fstest_names:
            if not in_expect:
                events.append(('query', rest))
            continue
        m = re.match(r'^([A-Za-z_][A-Za-z0-9_]*)=(.*)$', body)
        if m and not in_expect:
            events.append(('assign', m.group(1), m.group(2)))
    return events


NOFOLLOW_OPS = {'lstat', 'lchown', 'lchmod', 'lchflags', 'unlink', 'unlinkat', 'rmdir',
                'rename', 'renameat', 'readlink', 'readlinkat', 'symlink', 'symlinkat', 'link'}


def norm(path):
    return os.path.normpath(path) if path else path


class State:
    """What a .t file's earlier cases did to its names (names as the commands spell them,
    relative to the test's working directory)."""

    def __init__(self):
        self.absent = set()     # a refused special file / link, or a name the cascade removed
        self.stray = set()      # names a mistaken success created or replaced
        self.dangling = {}      # symlink -> the absent name it points to
        self.link_src = set()   # sources of refused links

    @staticmethod
    def _under(tok, names):
        return any(tok == a or tok.startswith(a + '/') for a in names)

    def hits(self, ops):
        """[(token, kind)]: kind 'exact' (an absent name itself), 'below' (inside one),
        'stray', or 'dangling' (a symlink to an absent name, followed by this op)."""
        out = []
        for op in ops:
            for t in op[1:]:
                if any(t.startswith(a + '/') for a in self.absent):
                    out.append((t, 'below'))
                elif t in self.absent:
                    out.append((t, 'exact'))
                elif self._under(t, self.stray):
                    out.append((t, 'stray'))
                elif t in self.dangling and op[0] not in NOFOLLOW_OPS:
                    out.append((t, 'dangling'))
        return out

    def parent_of_absent(self, ops):
        """Tokens naming a directory in which an absent name should be."""
        parents = {norm(os.path.dirname(a)) or '.' for a in self.absent}
        return [t for op in ops for t in op[1:] if norm(t) in parents]

    def revive(self, n):
        self.absent.discard(n)
        self.stray.discard(n)
        self.dangling.pop(n, None)
        self.link_src.discard(n)

    def make_absent(self, n):
        self.stray.discard(n)
        self.dangling.pop(n, None)
        self.link_src.discard(n)
        self.absent.add(n)


def classify_file(tf):
    """Sets c.verdict for every failing case of tf (R1..R5, see the module docstring)."""
    failing = [c for c in tf.cases.values() if not c.ok]
    if tf.trace is None:
        for c in failing:
            ops = split_command(c.cmd or '')
            if c.got == 'EPERM' and ops and is_special_op(ops[0]):
                c.verdict = ('expected', 'R1 own-op')
            else:
                c.verdict = ('unexpected', 'no trace' if c.cmd is None else '')
        return

    st = State()
    tainted = {}            # var -> value captured from a query of an absent name
    captured = {}           # var -> (order, value, query) for the pjdfstest queries
    order = 0
    pending_query = None
    last_query = None       # (query, var, value) of the last capture
    call = None             # (kind, args) of the current expect / test_check
    last_expect = None      # the last expect Case
    for ev in tf.trace:
        if ev[0] == 'call':
            call = (ev[1], ev[2])
            continue
        if ev[0] == 'query':
            pending_query = ev[1]
            continue
        if ev[0] == 'assign':
            var, val = ev[1], ev[2]
            if pending_query is not None:
                order += 1
                captured[var] = (order, val, pending_query)
                last_query = (pending_query, var, val)
                qops = split_command(pending_query)
                if ERRNO_RE.match(val) and qops and st.hits(qops[:1]):
                    tainted[var] = val
                else:
                    tainted.pop(var, None)
            else:
                captured.pop(var, None)
                tainted.pop(var, None)
            pending_query = None
            continue
        # a case
        _, ok, num = ev
        c = tf.cases.get(num)
        kind_args, call = call, None
        if c is None:
            continue
        if kind_args is None:
            # echoed by the .t itself (truncate/12.t: r=`truncate ...`; case $r in ...)
            if not c.ok:
                if last_query is not None and c.cmd is None:
                    c.cmd, c.got = last_query[0], last_query[2]
                    c.expected = '(see the .t)'
                c.verdict = ('unexpected', '')
            continue
        kind, args = kind_args
        if kind == 'test_check':
            c.kind = 'test_check'
            if c.cmd is None:
                c.cmd = 'test_check ' + args
            # name the operands: test_check $a -lt $b  [a=`stat . mtime`=..., b=...], by
            # the .t's test_check lines whose variables hold these values now
            targs = args.split()
            names, best = None, -1
            for line_vars in tf.test_checks:
                if len(line_vars) == len(targs) and all(
                        (v.startswith('$') and v[1:] in captured and captured[v[1:]][1] == t) or
                        v == t for v, t in zip(line_vars, targs)):
                    # several lines may match: the one whose variable was set last
                    last = max([captured[v[1:]][0] for v in line_vars if v.startswith('$')] or [0])
                    if last > best:
                        names, best = line_vars, last
            named, notes = [], []
            for i, t in enumerate(targs):
                var = names[i][1:] if names and names[i].startswith('$') else None
                if var is None and not names:
                    src = [(o, v) for v, (o, val, q) in captured.items() if val == t]
                    if src:     # a guess: the older variable on the left
                        var = (min(src) if i == 0 else max(src))[1]
                if var:
                    named.append('$' + var)
                    notes.append('%s=`%s`=%s' % (var, captured[var][2], t))
                else:
                    named.append(t)
            if notes:
                c.cmd = 'test_check %s  [%s]' % (' '.join(named), '; '.join(notes))
            c.before = last_expect.cmd if last_expect is not None else None
            if not c.ok:
                if any(t in tainted.values() for t in args.split()):
                    c.verdict = ('expected', 'R3 captured')
                elif last_expect is not None and not last_expect.ok and \
                        last_expect.verdict and last_expect.verdict[0] == 'expected':
                    c.verdict = ('expected', 'R4 after')
                else:
                    c.verdict = ('unexpected', '')
            continue
        # expect / jexpect: "E CMD..." (jexpect: "S D E CMD...")
        a = args.split(None, 3 if kind == 'jexpect' else 1)
        if kind == 'jexpect':
            a = a[2:]
        exp = a[0] if a else ''
        cmd = a[1] if len(a) > 1 else ''
        if c.cmd is None:
            c.cmd, c.expected = cmd, exp
        last_expect = c
        ops = split_command(c.cmd)
        created = [n for op in ops for n in created_names(op)]
        removed = [n for op in ops for n in removed_names(op)]
        if not c.ok:
            hits = st.hits(ops)
            exp_fields = set(re.split(r'[,|]', c.expected or ''))
            stat_names = [op[1] for op in ops if op[0] in ('stat', 'lstat') and len(op) > 1] + \
                         [op[1] for op in ops if op[0] == 'open' and len(op) > 1 and
                          any(o[0] == 'fstat' for o in ops)]
            creating_ok = c.expected == '0' and all(k == 'exact' and t in created for t, k in hits)
            if c.got == 'EPERM' and any(is_special_op(op) for op in ops):
                c.verdict = ('expected', 'R1 own-op')
            elif hits and not creating_ok:
                c.verdict = ('expected', 'R2 absent')
            elif exp_fields & {'ENOTEMPTY', 'EEXIST'} and st.parent_of_absent(ops):
                c.verdict = ('expected', 'R2 absent')
            elif any(f in tainted.values() for f in exp_fields if f):
                c.verdict = ('expected', 'R3 captured')
            elif any(n in st.link_src for n in stat_names):
                c.verdict = ('expected', 'R5 link-src')
            else:
                c.verdict = ('unexpected', '')
        # what this case did to the names
        if c.ok:
            if c.expected == '0':
                for op in ops:
                    tgt = special_target(op)
                    if tgt is not None:
                        st.revive(tgt)
                moved_src = any(n in st.link_src for n in removed)
                for n in removed:
                    st.stray.discard(n)
                    st.dangling.pop(n, None)
                    st.link_src.discard(n)
                for op in ops:
                    for n in created_names(op):
                        st.revive(n)
                        if op[0] in ('symlink', 'symlinkat') and len(op) > 1:
                            target = norm(os.path.join(os.path.dirname(n), op[1]))
                            if target in st.absent or st._under(target, st.absent):
                                st.dangling[n] = target
                if moved_src:                   # rename A B of a link source: B is A now
                    st.link_src.update(created)
        elif c.verdict[0] == 'expected':
            if c.expected == '0':
                for op in ops:
                    tgt = special_target(op)
                    if tgt is not None:         # a refused special file or link
                        src = link_source(op)
                        if not st._under(tgt, st.stray):    # a stray object stays there
                            st.make_absent(tgt)
                        if src is not None and not st.hits([['stat', src]]):
                            st.link_src.add(src)
                    elif op[0] in ('rename', 'renameat') and c.got != '0':
                        # the absent source did not move: its target is absent as well
                        for n in created_names(op):
                            st.make_absent(n)
            if c.got == '0':
                # a mistaken success (the object it should have met was missing): what it
                # removed is gone, what it created or replaced is not what the test thinks
                for n in removed:
                    st.make_absent(n)
                for n in created:
                    st.absent.discard(n)
                    st.stray.add(n)
    # failing cases the trace did not reach
    for c in failing:
        if c.verdict is None:
            ops = split_command(c.cmd or '')
            if c.got == 'EPERM' and ops and is_special_op(ops[0]):
                c.verdict = ('expected', 'R1 own-op')
            else:
                c.verdict = ('unexpected', 'not in trace')


def load_group(gdir, tests_dir, group):
    try:
        with open(os.path.join(gdir, 'prove.out'), errors='replace') as f:
            text = f.read()
    except OSError:
        text = ''
    files = parse_prove(text, tests_dir)
    # every .t of the group must have run
    want = []
    for root, _, names in os.walk(os.path.join(tests_dir, group)):
        for n in names:
            if n.endswith('.t'):
                want.append(os.path.relpath(os.path.join(root, n), tests_dir))
    for rel in sorted(want):
        if rel not in files:
            tf = TFile(rel)
            tf.extra.append(('not run', 'the file did not run (bail out or timeout before it)'))
            files[rel] = tf
    for tf in files.values():
        tf.trace = parse_trace(os.path.join(gdir, 'trace', tf.path.replace('/', '_') + '.trace'))
        try:
            with open(os.path.join(tests_dir, tf.path), errors='replace') as f:
                for line in f:
                    m = re.match(r'^\s*test_check\s+(.*?)\s*$', line)
                    if m:
                        tf.test_checks.append(re.sub(r'\$\{(\w+)\}', r'$\1', m.group(1)).split())
        except OSError:
            pass
        classify_file(tf)
        if tf.path in LIMITS:
            for c in tf.cases.values():
                if not c.ok and c.verdict[0] == 'unexpected':
                    c.verdict = ('expected', LIMITS[tf.path])
        ran = len(tf.cases)
        if tf.plan is None and not tf.extra:
            tf.extra.append(('no plan', 'no 1..N line'))
        if tf.plan is not None and ran < tf.plan:
            missing = [n for n in range(1, tf.plan + 1) if n not in tf.cases]
            why = 'bail out: ' + tf.bail if tf.bail else \
                ('exit status %s' % tf.exit if tf.exit is not None else 'stopped early')
            if tf.notes:
                why += '; it printed: ' + tf.notes[0][:200]
            tf.extra.append(('not run', '%d planned cases did not run (%s): %s' %
                             (len(missing), why, ranges(missing))))
            tf.missing = len(missing)
        elif tf.bail:
            tf.extra.append(('bail out', tf.bail))
        for pe in tf.parse_errors:
            if not (tf.plan is not None and ran < tf.plan and 'Bad plan' in pe):
                tf.extra.append(('parse error', pe))
        if tf.exit and not tf.extra and all(c.ok for c in tf.cases.values()):
            tf.extra.append(('exit', 'exited with status %d' % tf.exit))
    return files


def ranges(nums):
    out, start, prev = [], None, None
    for n in nums:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            out.append(str(start) if start == prev else '%d-%d' % (start, prev))
            start = prev = n
    if start is not None:
        out.append(str(start) if start == prev else '%d-%d' % (start, prev))
    return ','.join(out)


def shorten(text, names):
    """pjdfstest_<md5> names -> n0, n1, ... (per file, in order of appearance); long hex
    components (NAME_MAX/PATH_MAX tests) -> <hexN>."""
    def sub(m):
        s = m.group(0)
        if s not in names:
            names[s] = 'n%d' % len(names)
        return names[s]
    text = re.sub(r'pjdfstest_[0-9a-f]{32}', sub, text or '')
    return re.sub(r'[0-9a-f]{40,}', lambda m: '<hex%d>' % len(m.group(0)), text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--list-expected', action='store_true',
                    help='also list every expected failure with the rule that matched')
    ap.add_argument('pjdfstest_dir')
    ap.add_argument('results_dir')
    opt = ap.parse_args()
    tests_dir = os.path.realpath(os.path.join(opt.pjdfstest_dir, 'tests'))
    if not os.path.isdir(tests_dir) or not os.path.isdir(opt.results_dir):
        print('pjdfstest_classify.py: no %s or %s' % (tests_dir, opt.results_dir), file=sys.stderr)
        return 2
    order = []
    order_file = os.path.join(opt.results_dir, 'order')
    if os.path.exists(order_file):
        with open(order_file) as f:
            order = [l.split() for l in f if l.strip()]
    if not order:
        print('pjdfstest_classify.py: nothing ran', file=sys.stderr)
        return 2

    unexpected_rows, expected_rows = [], []
    tables = collections.OrderedDict()
    for engine, group in order:
        files = load_group(os.path.join(opt.results_dir, engine, group), tests_dir, group)
        total = failed = exp = unexp = 0
        for tf in files.values():
            names = {}
            total += max(tf.plan or 0, len(tf.cases))
            for c in tf.cases.values():
                if c.ok:
                    continue
                failed += 1
                cmd = shorten(c.cmd, names)
                if c.kind == 'test_check' and c.before:
                    cmd += '  [after: %s]' % shorten(c.before, names)
                row = (engine, tf.path, str(c.num), cmd,
                       shorten(c.expected, names) if c.expected is not None else '-',
                       shorten(c.got, names) if c.got is not None else '-')
                if c.verdict[0] == 'expected':
                    exp += 1
                    expected_rows.append(row + (c.verdict[1],))
                else:
                    unexp += 1
                    unexpected_rows.append(row + (c.verdict[1],))
            for what, why in tf.extra:
                n = tf.missing if what == 'not run' and tf.missing else 1
                failed += n
                unexp += n
                if what == 'not run' and not tf.cases:
                    total += 1
                unexpected_rows.append((engine, tf.path, what, why, '-', '-', ''))
        tables.setdefault(engine, []).append((group, total, failed, exp, unexp))

    fmt = '%-9s %-10s %7s %7s %9s %11s'
    for engine, rows in tables.items():
        print(fmt % ('engine', 'group', 'total', 'failed', 'expected', 'unexpected'))
        sums = [0, 0, 0, 0]
        for group, *nums in rows:
            print(fmt % ((engine, group) + tuple(nums)))
            sums = [s + n for s, n in zip(sums, nums)]
        print(fmt % ((engine, 'ALL') + tuple(sums)))
        print()
    print('expected = EPERM by design (hard links, special files) and its direct consequences, or a documented limit (R6)')
    print()
    if unexpected_rows:
        print('Unexpected failures (%d cases; names renumbered n0, n1, ... per file):' %
              sum(t[4] for rows in tables.values() for t in rows))
        for r in unexpected_rows:
            note = ' (%s)' % r[6] if r[6] else ''
            res = '  => expected %s, got %s' % (r[4], r[5]) if r[4] != '-' else ''
            print('  %-8s %-16s %-5s %s%s%s' % (r[0], r[1], r[2], r[3], res, note))
    else:
        print('No unexpected failures.')
    if opt.list_expected:
        print()
        print('Expected failures (%d):' % len(expected_rows))
        for r in expected_rows:
            res = '  => expected %s, got %s' % (r[4], r[5]) if r[4] != '-' else ''
            print('  %-8s %-16s %-5s %-12s %s%s' % (r[0], r[1], r[2], r[6], r[3], res))
    return 1 if unexpected_rows else 0


if __name__ == '__main__':
    sys.exit(main())
