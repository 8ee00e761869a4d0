'use strict';
// vm: code compiled at run time. The global eval and Function are not hooked: replacing
// them changes semantics (a direct eval sees the caller's scope only when it *is* the
// original eval; new Function's result and toString differ), which the probe must not do.

const vm = require('vm');

const codeArgs = (code) => [typeof code === 'string' ? code : String(code)];

function install(kit, probe) {
  for (const fn of ['runInNewContext', 'runInContext', 'runInThisContext', 'compileFunction']) {
    kit.wrap(vm, fn, `vm.${fn}`, 'code', codeArgs, 'sync'); // blocking: throw
  }
  // new vm.Script(code): a subclass that checks before compiling; instances stay
  // `instanceof` the original class
  const hook = kit.hook('vm.Script', 'code');
  const ok = kit.replace(vm, 'Script', (Orig) => {
    class Script extends Orig {
      constructor(code, options) {
        const err = probe.check(hook, codeArgs, undefined, [code, options], Script);
        if (err) throw err;
        super(code, options);
      }
    }
    return Script;
  });
  if (!ok) kit.hooks.pop();
}

module.exports = { family: 'vm', install };
