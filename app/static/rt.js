/* Referral tracking snippet: keeps the click id and referral code from the landing URL in
   first-party cookies of the shop's own domain, exposes them to the checkout, and fires the
   order pixel on the confirmation page. No dependencies. Served by GET /t/rt.js.
   <script src="https://go.yourshop.com/t/rt.js" data-merchant="MERCHANT_ID" data-days="30"></script> */
(function (w, d) {
  "use strict";
  var s = d.currentScript;
  var attr = function (n) { return s ? s.getAttribute(n) : null; };
  var origin = s && s.src ? new URL(s.src).origin : "";
  var days = Math.min(Math.max(parseInt(attr("data-days"), 10) || 30, 1), 365);
  var CLICK = "rt_click", CODE = "rt_code";
  function read(name) {
    var m = d.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return m ? decodeURIComponent(m[1]) : null;
  }
  function keep(name, value) {
    d.cookie = name + "=" + encodeURIComponent(value) + "; max-age=" + days * 86400 +
      "; path=/; samesite=lax" + (location.protocol === "https:" ? "; secure" : "");
  }
  var q = new URLSearchParams(location.search);
  var click = (q.get("__CLICK_PARAM__") || "").toLowerCase();
  var code = q.get("ref") || q.get("referral_code") || "";
  if (/^[0-9a-f]{32}$/.test(click)) keep(CLICK, click);
  if (/^[A-Za-z0-9_-]{1,64}$/.test(code)) keep(CODE, code);
  w.referral = {
    clickId: function () { return read(CLICK); },
    code: function () { return read(CODE); },
    /* Put both into a checkout form (hidden inputs rcid and referral_code). */
    fill: function (form) {
      [["rcid", read(CLICK)], ["referral_code", read(CODE)]].forEach(function (p) {
        if (!p[1]) return;
        var input = form.querySelector("input[name='" + p[0] + "']") || d.createElement("input");
        input.type = "hidden"; input.name = p[0]; input.value = p[1];
        if (!input.parentNode) form.appendChild(input);
      });
    },
    /* On the confirmation page: referral.trackOrder({orderId, amountMinor, currency}). */
    trackOrder: function (o) {
      var m = (o && o.merchant) || attr("data-merchant");
      var url = origin + "/t/pixel.gif?m=" + encodeURIComponent(m) +
        "&order_id=" + encodeURIComponent(o.orderId) +
        (o.amountMinor != null ? "&amount_minor=" + encodeURIComponent(o.amountMinor) : "") +
        (o.currency ? "&currency=" + encodeURIComponent(o.currency) : "");
      var img = new Image(1, 1);
      img.referrerPolicy = "no-referrer";
      img.src = url;
      return img;
    }
  };
})(window, document);
