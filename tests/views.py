"""Tiny views the tests drive through the test client."""

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from tests.testapp.models import Author


@csrf_exempt
def create_author(request):
    author = Author.objects.create(email=request.POST["email"])
    return JsonResponse({"id": str(author.pk)})


def read_author(request, pk):
    author = Author.objects.get(pk=pk)
    return JsonResponse({"email": author.email, "alias": author._state.db})
