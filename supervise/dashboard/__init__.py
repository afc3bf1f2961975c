"""The web dashboard's page: static files only (index.html, dashboard.css, dashboard.js).

No code, no build step, nothing fetched from elsewhere: the files ship in the
package and `supervise.runtime.dashboard` serves them with
`importlib.resources`, beside the JSON and the event stream they read.
"""
