// The API page (/api/docs): renders /api/v1/openapi.json with the vendored Swagger UI. A file
// rather than an inline script, which the Content-Security-Policy refuses.
document.addEventListener("DOMContentLoaded", function () {
  var root = document.getElementById("swagger-ui");
  // Anything the policy refuses is written on the page's root (and its browser test reads it).
  document.addEventListener("securitypolicyviolation", function (e) {
    var seen = root.dataset.cspViolations ? root.dataset.cspViolations + "; " : "";
    root.dataset.cspViolations = seen + e.violatedDirective + " " + (e.blockedURI || "");
  });
  window.ui = SwaggerUIBundle({
    url: root.dataset.url,
    domNode: root,
    deepLinking: true,
    // The plain layout: the standalone preset's top bar brings an inline <style> the policy refuses.
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // Never send the document to swagger.io's online validator.
    validatorUrl: null,
  });
});
