// The widget has no interface of its own: its manifest's "lead_sources" location
// is what lets the integration add lead sources over the Sources API.
define([], function () {
  return function () {
    var self = this;
    this.callbacks = {
      render: function () { return true; },
      init: function () { return true; },
      bind_actions: function () { return true; },
      settings: function () { return true; },
      onSave: function () { return true; },
      destroy: function () {}
    };
    return this;
  };
});
