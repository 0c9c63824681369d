"""Sign-up (when enabled) and password change; log-in and log-out are Django's own views."""

from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from feedback.forms import TOO_MANY_SIGN_UPS, GuardedPasswordChangeForm, SignUpForm
from feedback.services.accounts import do_sign_up
from feedback.services.shared_cache import signing_up_too_fast


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if not settings.SIGNUP_ENABLED:
        raise Http404("Sign-up is switched off on this server.")
    if request.user.is_authenticated:
        return redirect("home")
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        if signing_up_too_fast(request, settings.SIGNUPS_PER_HOUR):
            form.add_error(None, TOO_MANY_SIGN_UPS)
            context = {"form": form}
            return render(
                request, "registration/signup.html", context, status=HTTPStatus.TOO_MANY_REQUESTS
            )
        user = do_sign_up(
            username=form.cleaned_data["username"],
            password=form.cleaned_data["password1"],
            email=form.cleaned_data.get("email") or "",
        )
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form})


class PasswordChangeView(auth_views.PasswordChangeView):
    """Django's, with a limit on wrong current passwords (``GuardedPasswordChangeForm``)."""

    form_class = GuardedPasswordChangeForm

    def get_form_kwargs(self) -> dict[str, Any]:
        return {**super().get_form_kwargs(), "request": self.request}
